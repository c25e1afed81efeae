"""The backend interface every runner implements."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from cbir.modelinfo import ModelInfo


class Runner(Protocol):
    """A loaded model: its facts, and uint8 [N, H, W, 3] -> float32 [N, D]."""

    info: ModelInfo
    name: str  # backend name, e.g. "onnxruntime"
    providers: list[str]

    def run(self, batch: np.ndarray) -> np.ndarray: ...
