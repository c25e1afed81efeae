"""The backend interface every runner implements, and the checks they share."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from cbir.errors import CbirError
from cbir.modelinfo import ModelInfo

AUTO_BATCH_CANDIDATES = (1, 4, 8, 16, 32)  # what ``auto`` batch size measures on a CPU runner


class Runner(Protocol):
    """A loaded model: its facts, its input, and uint8 [N, H, W, 3] -> float32 [N, D].

    ``run_torch`` takes a device-resident uint8 CUDA tensor (GPU backends; CPU runners raise).
    ``submit`` enqueues a batch and returns a handle whose call gives its answer; ``slots`` batches
    may be in flight at once (1 unless the runner overlaps copies with execution: TensorRT).
    ``batch_candidates``: the batch sizes ``auto`` measures (up to an engine profile's maximum).
    ``close`` frees what the runner holds (sessions, device memory); runners are context managers."""

    info: ModelInfo
    name: str  # backend name, e.g. "onnxruntime"
    providers: list[str]
    input_name: str
    input_shape: tuple  # (None, H, W, 3): None = dynamic batch
    input_dtype: str  # "uint8"

    slots: int
    batch_candidates: tuple[int, ...]
    on_gpu: bool  # runs on CUDA device ``gpu_index`` (``--decode gpu`` hands it device tensors)
    gpu_index: int

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def submit(self, batch: np.ndarray) -> Callable[[], np.ndarray]: ...

    def run_torch(self, images): ...

    def close(self) -> None: ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc) -> None: ...


class RunnerBase:
    """Shared parts: the input description, the output check, context management."""

    info: ModelInfo
    input_dtype = "uint8"
    slots = 1
    on_gpu = False  # runs on a CUDA device: takes ``run_torch`` input there (``--decode gpu``)
    gpu_index = 0  # that device
    batch_candidates: tuple[int, ...] = AUTO_BATCH_CANDIDATES

    def submit(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        """Synchronous by default: runs now, the handle returns the answer."""
        out = self.run(batch)
        return lambda: out

    @property
    def input_shape(self) -> tuple:
        h, w = self.info.input_size
        return (None, h, w, 3)

    def check_output(self, out: np.ndarray, n: int) -> np.ndarray:
        """A backend answer must have one row of ``dim`` values per input row."""
        if out.ndim != 2 or out.shape[0] != n or out.shape[1] != self.info.dim:
            raise CbirError(f"{self.name}: returned {tuple(out.shape)} for {n} images, expected ({n}, {self.info.dim})")
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
