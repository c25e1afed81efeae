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


def mark(hit: dict) -> str:
    """How a result (a ``Hit`` as a dict) was found, for people: "" for a plain vector hit."""
    if hit.get("by") == "hash":
        return "verified by its perceptual hash"
    if hit.get("by") == "colour":
        return "by mean colour: the query's pixels are shuffled"
    return f"verified, {int(hit['inliers'])} inliers" if hit.get("verified") and hit.get("inliers") is not None else ""
