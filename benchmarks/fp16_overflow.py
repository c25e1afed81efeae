"""Why the FP16 gate cannot use ONNX Runtime CPU: GeM (p = 8) with the head in FP16 overflows in true
FP16 arithmetic, yet ORT CPU (which upcasts) reports a healthy model. Prints the three estimates.

    .venv/bin/python benchmarks/fp16_overflow.py OUT_DIR
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch


def main(out: str) -> None:
    import onnx

    from cbir.export.onnx import INPUT_NAME, OUTPUT_NAME, graph_fingerprint, write_metadata
    from cbir.modelinfo import ModelInfo
    from cbir.models.retrieval import RetrievalModel
    from cbir.models.trunk import build_trunk
    from cbir.validate.fidelity import fp16_gate

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for head in (False, True):
        model = RetrievalModel(build_trunk("tf_efficientnet_lite0", 7, pretrained=True), "gem").eval()
        with torch.no_grad():
            model.pool.p.fill_(8.0)
        ref = copy.deepcopy(model)
        model.to_fp16(head=head)
        path = out_dir / f"gem_p8_head_{'fp16' if head else 'fp32'}.onnx"
        x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: "batch"},),
            dynamo=True,
            external_data=False,
        )
        proto = onnx.load(str(path))
        info = ModelInfo(
            "tf_efficientnet_lite0",
            7,
            "gem",
            320,
            (224, 224),
            (0.5,) * 3,
            (0.5,) * 3,
            precision=model.precision,
            fingerprint=graph_fingerprint(proto),
        )
        write_metadata(proto, info)
        onnx.save(proto, str(path))
        report = fp16_gate(ref, model, path, info, enforce=False)
        print(
            json.dumps(
                {
                    "head": "fp16" if head else "fp32",
                    **{k: report[k] for k in ("reference", "torch_half", "ort_cpu", "passed", "failures")},
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1])
