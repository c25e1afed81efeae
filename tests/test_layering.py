"""Imports point one way (DESIGN.md §1; the table in ``cbir/__init__.py``): a module imports only
from its own package or from a lower layer, and the inference path never imports torch.

Read from the source with ``ast`` (lazy imports inside functions count too), so a new upward import
fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cbir

SRC = Path(cbir.__file__).parent
# Longest prefix wins. Lower number = lower layer.
LAYERS = {
    "cbir.errors": 0,
    "cbir.modelinfo": 0,
    "cbir.vectors": 0,
    "cbir.fsio": 0,
    "cbir.cores": 0,
    "cbir.samples": 0,
    "cbir.sources": 0,
    "cbir.crashpoints": 0,
    "cbir.install": 0,
    "cbir.deadline": 0,
    "cbir.memory": 0,
    "cbir.models": 1,
    "cbir.engine": 2,
    "cbir.index": 3,
    "cbir.bench.metrics": 3,
    "cbir.bench.protocol": 3,
    "cbir.bench.ranking": 4,
    "cbir.validate": 5,
    "cbir.export": 6,
    "cbir.finetune": 6,
    "cbir.bench": 7,
    "cbir.serve": 7,
    "cbir.backend_checks": 7,
    "cbir.cli": 8,
    "cbir.__main__": 9,
}
TORCH_FREE = (
    "cbir.sources",
    "cbir.engine",
    "cbir.index",
    "cbir.vectors",
    "cbir.modelinfo",
    "cbir.fsio",
    "cbir.deadline",
    "cbir.memory",
    "cbir.bench.metrics",
    "cbir.bench.protocol",
    "cbir.serve",
)
# run_torch paths take torch tensors from the caller: torch is already there when they run
TORCH_OK_FUNCTIONS = {"run_torch"}
# the optional torch backend (lazily imported by the registry, never on the default path)
TORCH_OK_MODULES = (
    "cbir.engine.backends.torch",
    "cbir.index.ann.torch_flat",
    "cbir.engine.gpu_decode",
)  # opt-in, lazily imported


def layer(module: str) -> tuple[str, int]:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return best, LAYERS[best]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(tree: ast.AST, module: str):
    """(imported module, enclosing function name or None) for every import in the file."""
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                out.extend((a.name, f) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(module.split(".")[: -child.level] + ([base] if base else []))
                out.extend((f"{base}.{a.name}", f) for a in child.names)
            visit(child, f)

    visit(tree, None)
    return out


def test_imports_point_one_way():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        mod = module_name(path)
        if mod == "cbir":
            continue  # the package's lazy ``__getattr__`` re-exports
        own_prefix, own = layer(mod)
        for target, func in imports(ast.parse(path.read_text()), mod):
            if target.startswith("cbir.") and target not in ("cbir.__version__",):
                t_prefix, t = layer(target)
                same_package = t_prefix.split(".")[:2] == own_prefix.split(".")[:2]
                if t > own or (t == own and own > 0 and not same_package):  # layer 0: the core, one flat set
                    problems.append(f"{mod} (layer {own}) imports {target} (layer {t})")
            if (
                (target.split(".")[0] in ("torch", "timm", "torchvision") or target.startswith("cbir.models"))
                and mod.startswith(TORCH_FREE)
                and func not in TORCH_OK_FUNCTIONS
                and mod not in TORCH_OK_MODULES
            ):
                problems.append(f"{mod} imports {target} in {func or 'module scope'}")
    assert not problems, "\n".join(problems)


# Inside ``cbir.index`` the parts point one way too: storage < ann < query, snapshot < build, match_regions < check, dedup, gallery.
INDEX_PARTS = {
    "cbir.index.storage": 0,
    "cbir.index.ann": 1,
    "cbir.index.query": 2,
    "cbir.index.ingest": 3,
    "cbir.index.snapshot": 2,
    "cbir.index.match_regions": 3,
    "cbir.index.check": 4,
    "cbir.index.dedup": 4,
    "cbir.index.gallery": 5,
    "cbir.index": 5,
}


def index_part(module: str) -> int:
    return INDEX_PARTS[max((p for p in INDEX_PARTS if module == p or module.startswith(p + ".")), key=len)]


def test_index_parts_point_one_way_and_nothing_imports_in_a_circle():
    problems, graph = [], {}
    for path in sorted(SRC.rglob("*.py")):
        mod = module_name(path)
        targets = {t for t, _ in imports(ast.parse(path.read_text()), mod) if t.startswith("cbir.")}
        graph[mod] = targets
        if mod.startswith("cbir.index."):
            for t in targets:
                if t.startswith("cbir.index.") and index_part(t) > index_part(mod):
                    problems.append(f"{mod} imports {t}")
    assert not problems, "\n".join(problems)
    modules = set(graph)

    def resolve(target: str) -> str | None:  # "cbir.index.storage.shards.read_shard" -> the module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {
        m: {r for t in ts if (r := resolve(t)) and r != m and not m.startswith(r + ".")} for m, ts in graph.items()
    }
    seen, stack, cycles = set(), [], []

    def visit(m: str) -> None:
        if m in stack:
            cycles.append(stack[stack.index(m) :] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in edges.get(m, ()):
            visit(n)
        stack.pop()

    for m in sorted(edges):
        visit(m)
    cycles = [c for c in cycles if not any(x in ("cbir", "cbir.cli") for x in c)]  # package re-exports
    assert not cycles, cycles


def test_inference_path_runs_without_torch(lite0_onnx, gallery_dir, tmp_path):
    """Embed, build, search in a fresh interpreter where importing torch would raise."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'torchvision'):
            raise ImportError('torch is blocked in this test')
sys.meta_path.insert(0, Block())
from cbir.index.gallery import Gallery
from cbir.engine.embedder import Embedder
g = Gallery.create({str(tmp_path / "idx")!r}, Embedder({str(lite0_onnx)!r}))
g.build([{str(gallery_dir)!r}])
print(len(g.search([{str(next(gallery_dir.rglob("*.jpg")))!r}], k=3)[0]['results']))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"
