"""PyTorch loader + runner: the exported model rebuilt in PyTorch (timm trunk + cbir head) from the
checkpoint ``cbir export --torch-checkpoint`` writes beside the ONNX file (``<model>.torch.pt``),
checked against the ONNX file's fingerprint. Optional and lazily imported: torch and timm come with
the ``export`` extra; the inference path never needs them.

Same contract as every runner: uint8 [N, H, W, 3] in (the model's own preprocessing, folded into
the module as into the ONNX graph), L2-normalised float32 [N, D] out. ``device``: ``cuda`` (default
when a CUDA device is visible) or ``cpu``. On CUDA the trunk runs in FP16 with the head in FP32, as
in ``cbir export --precision fp16`` (``precision="fp32"`` keeps it all FP32), in channels-last
memory (the uint8 NHWC input already is), optionally through ``torch.compile`` (``compile=True``).
On the CPU it runs FP32: it exists so that CI checks the backend's plumbing and its parity with
ONNX Runtime.

CUDA graphs (default on CUDA unless ``compile``; ``cuda_graphs=False`` runs eagerly): a batch of n
rows runs in the graph of the smallest bucket ≥ n (``BUCKETS``: powers of two to 256; bigger
batches are split), captured on first use into one shared memory pool, after warm-up passes on a
side stream. The rows past n in a bucket are stale input whose outputs are dropped: every layer
works per image in eval mode, so they cannot change the n answers. Replays are serialised by a
lock (the static buffers are shared). Launch overhead is what graphs remove, so they matter most
for small batches on a fast GPU.

``compile=True``: ``torch.compile`` with inductor's ``max-autotune`` (its own CUDA graphs) and
``freezing`` (weights as constants: BatchNorm folded into the convolutions), FP16 trunk as above.

In-flight slots on CUDA (``slots``, default ``SLOTS`` = 2): each owns a pinned host buffer and a
device buffer for ``BUCKETS[-1]`` rows, a copy stream and an event. ``submit`` copies a batch into a
free slot's pinned buffer and starts its host-to-device copy on the slot's stream; the model waits
for that copy on the compute stream, and the answer comes back (device-to-host, non-blocking, into
the slot's pinned output) behind it — so the bulk pipeline copies batch i + 1 in while batch i runs
and the host decodes batch i + 2. A slot is free again once its handle was called.

TF32: PyTorch runs FP32 convolutions in TF32 on Ampere and newer unless told not to
(``torch.backends.cudnn.allow_tf32``, default True); ``tf32=False`` turns it off for this process
(``precision="fp32"`` then means IEEE FP32), and ``providers`` says which ran.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.engine.backends.base import RunnerBase
from cbir.errors import CbirError
from cbir.modelinfo import ModelInfo, read_onnx

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cbir-torch-1"
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SLOTS = 2


def bucket(n: int) -> int:
    """The smallest CUDA-graph bucket that holds ``n`` rows (1 ≤ n ≤ ``BUCKETS[-1]``)."""
    return next(b for b in BUCKETS if b >= n)


def checkpoint_path(model: str | os.PathLike) -> Path:
    """Where the torch checkpoint of an exported model lives: ``m.onnx`` → ``m.torch.pt``."""
    return Path(model).with_suffix(".torch.pt")


def _import_torch():
    try:
        import torch
    except ImportError:
        raise CbirError("--backend torch needs PyTorch and timm: pip install 'cbir[export]'") from None
    return torch


def _device_precision(torch, device: str | None, precision: str | None) -> tuple[str, str]:
    """(device, precision) checked: cuda (default when visible) or cpu; fp16 (default on cuda) or fp32."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise CbirError(f"--device {device!r}: choose cuda or cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CbirError(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    precision = precision or ("fp16" if device == "cuda" else "fp32")
    if precision not in ("fp32", "fp16") or (precision == "fp16" and device == "cpu"):
        raise CbirError(f"--precision {precision}: --backend torch runs fp32, or fp16 on --device cuda")
    return device, precision


def _from_checkpoint(torch, model: str | os.PathLike, info):
    """The FP32 ``RetrievalModel`` of an export, from the checkpoint beside it (fingerprint checked)."""
    from cbir.models.retrieval import RetrievalModel
    from cbir.models.trunk import build_trunk

    path = checkpoint_path(model)
    if not path.is_file():
        raise CbirError(
            f"--model {model}: no torch checkpoint {path.name} beside it; export with "
            f"`cbir export ... --torch-checkpoint` to run it with --backend torch"
        )
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("format") != CHECKPOINT_FORMAT or ck.get("fingerprint") != info.fingerprint:
        raise CbirError(
            f"--model {model}: {path.name} was written for another export (fingerprint "
            f"{str(ck.get('fingerprint'))[:12]}, the model's {str(info.fingerprint)[:12]}); export again"
        )
    net = RetrievalModel(
        build_trunk(ck["arch"], ck["block"], pretrained=False),
        ck["pooling"],
        ck["image_size"],
        None,
        tuple(ck["scales"]),
        False,
    )
    net.load_state_dict(ck["state_dict"], strict=True)
    return net


class TorchRunner(RunnerBase):
    """Runs uint8 NHWC batches through the rebuilt ``RetrievalModel`` on ``device``."""

    name = "torch"
    input_name = "images"

    def __init__(
        self,
        model: str | os.PathLike,
        device: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        compile: bool = False,
        cuda_graphs: bool | None = None,
        slots: int | None = None,
        tf32: bool | None = None,
    ):
        torch = _import_torch()
        info, _, _ = read_onnx(model)
        device, precision = _device_precision(torch, device, precision)
        net = _from_checkpoint(torch, model, info)
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        self._setup(torch, net, info, device, precision, compile, cuda_graphs, slots, tf32)

    @classmethod
    def from_spec(
        cls,
        arch: str,
        block: int,
        pooling: str = "gap",
        image_size: int | None = None,
        device: str | None = None,
        precision: str | None = None,
        **options,
    ) -> "TorchRunner":
        """A runner of ``arch`` cut after ``block`` with random weights, built here without an ONNX
        export (speed only: ``cbir bench sweep-device``); ``options`` as ``__init__``'s."""
        torch = _import_torch()
        from cbir.models.archs import get_arch
        from cbir.models.retrieval import RetrievalModel
        from cbir.models.trunk import build_trunk

        spec = get_arch(arch)
        device, precision = _device_precision(torch, device, precision)
        net = RetrievalModel(build_trunk(spec.name, block, pretrained=False), pooling, image_size)
        size = net.image_size
        info = ModelInfo(spec.name, block, pooling, spec.dim(block), (size, size), spec.mean, spec.std)
        runner = cls.__new__(cls)
        runner._setup(torch, net, info, device, precision, **options)
        return runner

    def _setup(
        self, torch, net, info, device: str, precision: str, compile=False, cuda_graphs=None, slots=None, tf32=None
    ) -> None:
        """Put ``net`` on ``device`` in ``precision`` and make it this runner's (module docstring)."""
        self.info = info
        net.eval().to(device)
        if precision == "fp16":
            net.to_fp16(head=False)
        if device == "cuda":
            net.to(memory_format=torch.channels_last)
        if cuda_graphs and device != "cuda":
            raise CbirError("CUDA graphs need --device cuda")
        self._net = _compiled(torch, net) if compile else net
        self._torch, self.device, self.precision = torch, device, precision
        self.on_gpu = device == "cuda"
        self.cuda_graphs = device == "cuda" and not compile if cuda_graphs is None else cuda_graphs
        self._graphs: dict[int, tuple] = {}  # bucket -> (graph, static input, static output)
        self._pool = None
        self._lock = threading.Lock()
        self._slots: queue.Queue | None = None
        self.providers = [f"torch-{device}-{precision}" + ("-graphs" if self.cuda_graphs else "")]
        if compile:
            self.providers[0] += "-compiled"
        if device == "cuda":
            self.batch_candidates = (1, 4, 8, 16, 32, 64, 128, 256)
            if tf32 is not None:
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            if precision == "fp32":
                self.providers[0] += "-tf32" if torch.backends.cudnn.allow_tf32 else "-ieee"
            self._open_slots(SLOTS if slots is None else slots)

    def _forward(self, x):
        torch = self._torch
        if not self.cuda_graphs:
            with torch.inference_mode():
                return self._net(x).float()
        if len(x) > BUCKETS[-1]:
            return torch.cat([self._forward(x[i : i + BUCKETS[-1]]) for i in range(0, len(x), BUCKETS[-1])])
        n = len(x)
        with self._lock, torch.inference_mode():
            entry = self._graphs.get(bucket(n))
            if entry is None:
                try:
                    entry = self._capture(bucket(n))
                except Exception as e:  # a layer that cannot be captured: say so once, run eagerly
                    log.warning(
                        "torch backend: CUDA graph capture failed (%s: %s); running eagerly", type(e).__name__, e
                    )
                    self.cuda_graphs, self.providers = False, [self.providers[0].removesuffix("-graphs")]
                    return self._net(x).float()
            graph, static_in, static_out = entry
            static_in[:n].copy_(x)
            graph.replay()
            return static_out[:n].clone()

    def _capture(self, b: int) -> tuple:
        """Warm up on a side stream, then capture the model for a batch of ``b`` rows."""
        torch = self._torch
        h, w = self.info.input_size
        static_in = torch.zeros((b, h, w, 3), dtype=torch.uint8, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._net(static_in)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self._net(static_in).float()
        self._graphs[b] = (graph, static_in, static_out)
        return self._graphs[b]

    @property
    def captured(self) -> list[int]:
        """Buckets with a captured CUDA graph."""
        return sorted(self._graphs)

    def _open_slots(self, n: int) -> None:
        if n < 1:
            raise CbirError(f"slots {n}: need at least 1")
        torch, (h, w) = self._torch, self.info.input_size
        self._slots, self._n_slots = queue.Queue(), n
        for _ in range(n):
            self._slots.put(
                _Slot(
                    torch.empty((BUCKETS[-1], h, w, 3), dtype=torch.uint8, pin_memory=True),
                    torch.empty((BUCKETS[-1], h, w, 3), dtype=torch.uint8, device="cuda"),
                    torch.empty((BUCKETS[-1], self.info.dim), dtype=torch.float32, pin_memory=True),
                    torch.cuda.Stream(),
                    torch.cuda.Event(),
                )
            )

    @property
    def slots(self) -> int:
        return self._n_slots if self._slots is not None else 1

    def submit(self, batch: np.ndarray):
        """CUDA: enqueue ≤ ``BUCKETS[-1]`` rows through a free slot (see the module docstring); the
        handle's call waits for the answer and frees the slot. Elsewhere: runs now."""
        n = len(batch)
        if self._slots is None or not 1 <= n <= BUCKETS[-1]:
            return super().submit(batch)
        torch = self._torch
        slot = self._slots.get()
        try:
            slot.host_in.numpy()[:n] = batch
            compute = torch.cuda.current_stream()
            with torch.cuda.stream(slot.stream):
                slot.dev_in[:n].copy_(slot.host_in[:n], non_blocking=True)
            compute.wait_stream(slot.stream)
            out = self._forward(slot.dev_in[:n])
            slot.host_out[:n].copy_(out, non_blocking=True)
            slot.done.record(compute)
        except BaseException:
            self._slots.put(slot)
            raise

        def answer() -> np.ndarray:
            try:
                slot.done.synchronize()
                return self.check_output(slot.host_out[:n].numpy().copy(), n)
            finally:
                self._slots.put(slot)

        return _once(answer)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._slots is not None and 1 <= len(batch) <= BUCKETS[-1]:
            return self.submit(batch)()
        x = self._torch.from_numpy(np.ascontiguousarray(batch, np.uint8))
        if self.device == "cuda":
            x = x.pin_memory().to("cuda", non_blocking=True)
        return self.check_output(self._forward(x).cpu().numpy(), len(batch))

    def run_torch(self, images):
        """uint8 [N, H, W, 3] tensor on this runner's device → float32 [N, D] tensor (stays there)."""
        if images.device.type != self.device:
            raise CbirError(f"run_torch: the images are on {images.device}, the model on {self.device}")
        return self.check_output(self._forward(images), len(images))  # RunnerBase's check reads tensors too

    def close(self) -> None:
        self._net, self._graphs, self._slots = None, {}, None


@dataclass
class _Slot:
    host_in: object  # pinned uint8 [BUCKETS[-1], H, W, 3]
    dev_in: object  # the same on the device
    host_out: object  # pinned float32 [BUCKETS[-1], D]
    stream: object  # the host-to-device copy's stream
    done: object  # recorded on the compute stream after the answer's copy back


def _once(fn):
    """A handle that calls ``fn`` once and gives the same answer on later calls."""
    got: list = []

    def handle():
        if not got:
            got.append(fn())
        return got[0]

    return handle


def _compiled(torch, net):
    """``torch.compile`` for inference: inductor ``max-autotune`` (CUDA graphs included) with
    ``freezing`` (parameters folded as constants: BatchNorm into the convolutions)."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    return torch.compile(net, mode="max-autotune")


def write_checkpoint(model, info, arch: str, block: int, pooling: str, output: str | os.PathLike) -> Path:
    """Save what ``TorchRunner`` needs to rebuild ``model`` (an FP32 ``RetrievalModel``) beside the
    ONNX file ``output``; refused for whitened or regional models (not supported by the runner yet)."""
    torch = _import_torch()
    if model.whitening is not None or model.with_regions:
        raise CbirError(
            "--torch-checkpoint: models with --whitening or --regions are not supported by --backend torch yet"
        )
    path = checkpoint_path(output)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": info.fingerprint,
            "arch": arch,
            "block": block,
            "pooling": pooling,
            "image_size": model.image_size,
            "scales": list(model.scales),
            "state_dict": model.state_dict(),
        },
        tmp,
    )
    os.replace(tmp, path)
    return path
