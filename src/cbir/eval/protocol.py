"""Labelled data sets and the Corel-1K protocol (DESIGN.md §5). Torch-free.

A data set is either class-per-folder (``DIR/<class>/<image>``) or flat ``N.jpg`` files with class
N // 100 (the original Corel-1K naming). Split: stratified 80/20 per seed (default seeds 0, 1, 2);
queries are the test split, the gallery is the whole set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.errors import CbirError
from cbir.sources import find_images


@dataclass
class Dataset:
    paths: list[Path]
    labels: np.ndarray  # int class index per image
    classes: list[str]


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise CbirError(f"--data {root}: not a directory")
    paths = find_images([root])
    if not paths:
        raise CbirError(f"--data {root}: no images found")
    parents = {p.parent for p in paths}
    if parents != {root}:
        names = [p.parent.relative_to(root).parts[0] if p.parent != root else "" for p in paths]
        if "" in names:
            raise CbirError(f"--data {root}: mixes images at the top level with class folders")
        classes = sorted(set(names))
        labels = np.array([classes.index(n) for n in names])
    else:
        nums = [re.match(r"^(\d+)$", p.stem) for p in paths]
        if not all(nums):
            raise CbirError(f"--data {root}: flat folders need N.jpg names (class = N // 100)")
        labels = np.array([int(m.group(1)) // 100 for m in nums])
        classes = [str(c) for c in sorted(set(labels))]
        labels = np.array([classes.index(str(c)) for c in labels])
    if len(classes) < 2:
        raise CbirError(f"--data {root}: needs at least 2 classes, found {len(classes)}")
    return Dataset(paths, labels, classes)


def stratified_split(labels: np.ndarray, seed: int, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), the same fraction from every class, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_train = int(round(len(idx) * train_fraction))
        n_train = min(max(n_train, 1), len(idx) - 1) if len(idx) > 1 else len(idx)
        train.extend(idx[:n_train])
        test.extend(idx[n_train:])
    return np.sort(np.array(train, int)), np.sort(np.array(test, int))
