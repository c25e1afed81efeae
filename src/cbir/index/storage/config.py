"""``index.json``: what an index directory was built with. Torch-free.

Keys: ``model`` (facts + fingerprint), ``model_path``, ``preprocess`` (size, resize, interpolation,
resampling: the pixels the vectors came from), ``factory`` (a FAISS factory string, or ``auto`` with
``memory_budget`` and ``target_recall``), ``index_factory`` (the one built), ``search`` (nprobe /
efSearch used by every search unless a call overrides it), ``tuning`` (recall, ms/query measured when
it was chosen), ``index_bytes``, ``dim`` (after whitening), ``shard_size``, ``whitening`` (fingerprint),
``dba``/``dba_alpha``, ``trained_on``, ``cbir_version``, ``created``, ``store`` (a Milvus collection that
holds the vectors instead of index.faiss: ``cbir.index.ann.milvus_store``; None: index.faiss).
Build options are fixed at creation: opening an existing index with a different explicit option is
refused (one line naming the option), an option left out means "as recorded".
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cbir import fsio
from cbir.errors import CbirError

INDEX_JSON = "index.json"
VOTES_FILE = "votes.npz"  # the descriptor-vote index, saved by the writers (``copies.votes.save``)
SHARD_SIZE = 1024
DEFAULTS = {
    "factory": "Flat",
    "shard_size": SHARD_SIZE,
    "dba": 0,
    "dba_alpha": 0.0,
    "memory_budget": "4GB",
    "target_recall": 0.95,
    "on_disk": False,
    "store": None,
}


def load(root: Path) -> dict:
    path = Path(root) / INDEX_JSON
    if not path.is_file():
        raise CbirError(f"--index {root}: not a cbir index directory (no {INDEX_JSON})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CbirError(f"{path}: unreadable ({e})") from None


def save(root: Path, config: dict) -> None:
    """Write index.json atomically, bumping ``revision`` (readers such as ``cbir serve`` compare it: an
    mtime can stay the same across two writes in one clock tick)."""
    config["revision"] = int(config.get("revision", 0)) + 1
    fsio.write_json(Path(root) / INDEX_JSON, config)


# What cbir itself writes into an index directory; a folder holding anything else is not ours to use.
OWN_NAMES = {
    INDEX_JSON,
    "meta.sqlite",
    "meta.sqlite-wal",
    "meta.sqlite-shm",
    "meta.sqlite-journal",
    "shards",
    "index.faiss",
    "report.json",
    "thumbs",
    "whitening.npz",
    ".writer.lock",
    "tune-queries.npy",
    "audit",
    VOTES_FILE,
}


_TEMPORARY = re.compile(
    r"^\.(index\.json|report\.json|index\.faiss|whitening\.npz|tune-queries\.npy|votes\.npz)\.\d+\.(tmp|npy|npz)$"
)
_IVF_LISTS = re.compile(r"^ivflists-[0-9a-f]{12}\.bin$")
_BLOCKS = re.compile(r"^\.blocks-[0-9a-f]{8}$")


def is_own_name(name: str) -> bool:
    """A name cbir makes in INDEX_DIR: ``OWN_NAMES``, IVF list files (``ivflists-<12 hex>.bin``), the
    temporary file of an atomic write of one of them (``.index.json.<pid>.tmp``) and on-disk build
    blocks (``.blocks-<8 hex>``) — exact patterns, so that no file of the user's is ever taken for ours."""
    return name in OWN_NAMES or bool(_TEMPORARY.match(name) or _IVF_LISTS.match(name) or _BLOCKS.match(name))


def foreign_entries(root: Path) -> list[str]:
    """Entries of an existing folder that cbir did not make (sorted); [] for a missing folder."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(e.name for e in root.iterdir() if not is_own_name(e.name))


def vectors_only_model(dim: int) -> dict:
    """The ``model`` entry of an index built from vectors with no cbir model: no image can be embedded
    for it (no cbir model has this fingerprint), vectors can be searched."""
    return {"arch": "vectors-only", "block": 0, "pooling": "none", "dim": dim, "fingerprint": f"vectors-only-{dim}d"}


def new(embedder, options: dict, dim: int, whitening_fp: str | None, model_dim: int | None = None) -> dict:
    """index.json for ``embedder``'s model, or for vectors of ``model_dim`` with no model (embedder None)."""
    from cbir.version import __version__

    model = embedder.info.public() if embedder is not None else vectors_only_model(model_dim)
    return {
        "model": model,
        "model_path": os.path.abspath(embedder.model_path) if embedder is not None else None,
        "preprocess": embedder.preprocess.policy if embedder is not None else None,
        "dim": dim,
        "whitening": whitening_fp,
        **options,
        "trained_on": 0,
        "cbir_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


SETTINGS = ("memory_budget", "target_recall")  # may change: they steer the next rebuild, not the vectors


def check_options(root: Path, config: dict, given: dict) -> dict:
    """Refuse explicit build options that differ from the ones the index was created with; take new
    ``SETTINGS`` (saved by the next rebuild) and return them."""
    settings = {}
    for key, value in given.items():
        if value is None:
            continue
        if key in SETTINGS:
            config[key] = settings[key] = value
            continue
        have = config.get(key, DEFAULTS.get(key))
        if have != value:
            flag = "--" + key.replace("_", "-")
            raise CbirError(
                f"{flag} {value}: index {root} was created with {flag} {have}; build a new index to change it"
            )
    return settings


@dataclass(frozen=True)
class Settings:
    """index.json as typed settings (read-only; ``Settings.of(config)``). The dict stays what is
    written: writers change it under the writer lock and save it (``save``)."""

    model: dict
    model_path: str | None
    preprocess: dict | None
    dim: int
    factory: str
    index_factory: str
    shard_size: int
    whitening: str | None
    dba: int
    local_features: str | None
    rerank: dict | None
    search: dict
    tuning: dict | None
    faiss_generation: int | None
    revision: int | None
    index_bytes: int | None
    trained_on: int
    target_recall: float | None
    on_disk: bool
    store: str | None

    @classmethod
    def of(cls, config: dict) -> Settings:
        return cls(
            model=config["model"],
            model_path=config.get("model_path"),
            preprocess=config.get("preprocess"),
            dim=config["dim"],
            factory=config.get("factory", DEFAULTS["factory"]),
            index_factory=config.get("index_factory", config.get("factory", DEFAULTS["factory"])),
            shard_size=config.get("shard_size", SHARD_SIZE),
            whitening=config.get("whitening"),
            dba=config.get("dba", 0),
            local_features=config.get("local_features"),
            rerank=config.get("rerank"),
            search=config.get("search") or {},
            tuning=config.get("tuning"),
            faiss_generation=config.get("faiss_generation"),
            revision=config.get("revision"),
            index_bytes=config.get("index_bytes"),
            trained_on=config.get("trained_on", 0),
            target_recall=config.get("target_recall"),
            on_disk=bool(config.get("on_disk")),
            store=config.get("store"),
        )

    @property
    def model_dim(self) -> int:
        """The model's output dimension (before whitening)."""
        return self.model["dim"]

    @property
    def vectors_only(self) -> bool:
        return self.model["arch"] == "vectors-only"

    @property
    def num_regions(self) -> int:
        """Regional descriptors per item (its model's ``--regions``; 0: none)."""
        return int(self.model.get("extra", {}).get("regions", 0))
