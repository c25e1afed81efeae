"""OpenVINO loader + runner (CPU; ``openvino`` imported lazily, extra ``cpu-fast``).

Reads the same exported ONNX file as ONNX Runtime (uint8 NHWC in, L2-normalised float32 out; the cbir
metadata from the file). Precision per run: ``fp32`` (default) or ``bf16`` (OpenVINO's
``INFERENCE_PRECISION_HINT``: the CPU plugin runs matmuls/convolutions in bfloat16 where the CPU has
AVX-512 BF16 or AMX, and keeps precision-sensitive ops in FP32); ``bf16`` on a CPU that does not
report BF16 is refused in one line. Threads = all cores by default, ``PERFORMANCE_HINT`` LATENCY
(one stream: the caller batches). The compiled model is cached per process (model, precision,
threads), and each thread gets its own infer request (the batcher's worker, bulk, callers).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from cbir.cores import all_cores
from cbir.engine.backends.base import RunnerBase
from cbir.errors import CbirError
from cbir.modelinfo import read_onnx

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
_compiled: dict[tuple, object] = {}
_compiled_lock = threading.Lock()


def import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise CbirError("--backend openvino needs OpenVINO: pip install 'cbir[cpu-fast]'") from None
    return ov


def cpu_capabilities() -> list[str]:
    """What the OpenVINO CPU plugin reports (e.g. FP32, BF16, INT8)."""
    return list(import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_model(model: str | Path, precision: str = "fp32", threads: int | None = None, hint: str = "LATENCY"):
    """The compiled model for these settings, compiled once per process."""
    if precision not in PRECISIONS:
        raise CbirError(f"--precision {precision!r}: the openvino backend runs {', '.join(PRECISIONS)}")
    ov = import_openvino()
    threads = threads or all_cores()
    key = (str(Path(model).resolve()), precision, threads, hint)
    with _compiled_lock:
        if key not in _compiled:
            core = ov.Core()
            if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                raise CbirError(
                    "--precision bf16: this CPU has no BF16 support (OpenVINO reports "
                    f"{core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}); use fp32"
                )
            try:
                m = core.read_model(str(model))
            except RuntimeError as e:
                raise CbirError(f"--model {model}: OpenVINO cannot read it ({str(e).splitlines()[0]})") from None
            _compiled[key] = core.compile_model(
                m,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                    "PERFORMANCE_HINT": hint,
                    "INFERENCE_NUM_THREADS": threads,
                },
            )
        return _compiled[key]


def read_info(model: str | Path) -> tuple:
    """(facts, input name, output name): from the ONNX metadata, or an IR's ``rt_info["cbir"]``
    (``cbir quantize`` writes it)."""
    if Path(model).suffix != ".xml":
        return read_onnx(model)
    from cbir.modelinfo import ModelInfo

    m = import_openvino().Core().read_model(str(model))
    if not m.has_rt_info(["cbir"]):
        raise CbirError(f"--model {model}: not a cbir model (no rt_info 'cbir'; make it with `cbir quantize`)")
    info = ModelInfo.from_json(m.get_rt_info(["cbir"]).astype(str), str(model))
    return info, m.inputs[0].get_any_name(), m.outputs[0].get_any_name()


class OvRunner(RunnerBase):
    """Runs uint8 NHWC batches through an OpenVINO compiled model."""

    def __init__(self, model: str | Path, precision: str = "fp32", threads: int | None = None):
        if not Path(model).is_file():
            raise CbirError(f"--model {model}: no such file")
        self.info, self.input_name, self.output_name = read_info(model)
        self.precision = precision
        self.compiled = compile_model(model, precision, threads)
        self.name = f"openvino[{precision}]"
        self.providers = [f"OpenVINO CPU {precision}"]
        self._local = threading.local()
        self._output = self.compiled.outputs[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        out = req.infer({0: np.ascontiguousarray(batch)})[self._output]
        return self.check_output(np.array(out, np.float32, copy=True), len(batch))

    def run_torch(self, images):
        raise CbirError("run_torch needs a GPU backend (openvino runs on the CPU)")
