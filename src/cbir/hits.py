"""One search result (``Hit``): what every stage of the search cascade returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Hit:
    id: int
    path: str
    score: float
    verified: bool = False  # spatially verified: RANSAC inliers ≥ min_inliers (such hits come first)
    inliers: int | None = None  # None: not checked
    # "colour": the mean-colour answer to a pixel-shuffled query (the cascade's colour stage); "hash":
    # verified by its perceptual hash (the hash stage: a heavily blurred copy), ``inliers`` None
    by: str = "vector"


def any_verified(hits: list[Hit]) -> bool:
    return any(h.verified for h in hits)
