"""Imports point one way (the layer table of ARCHITECTURE.md, read here): a module imports only
from its own package or from a lower layer, the parts of ``cbir.index`` point one way, nothing
imports in a circle, and the inference path never imports torch. Also: ``bench`` is a leaf, the
search cascade's order is written once, ``Gallery`` stays short, no function in ``src`` is over 80 lines.

Read from the source with ``ast`` (lazy imports inside functions count too), so a new upward import
fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import cbir

SRC = Path(cbir.__file__).parent
ARCHITECTURE = SRC.parents[1] / "ARCHITECTURE.md"


def _table() -> list[tuple[int, str]]:
    """(layer, packages cell) of each row of ARCHITECTURE.md's layer table."""
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", ARCHITECTURE.read_text(), re.M)
    assert rows, f"{ARCHITECTURE}: no layer table"
    return [(int(n), cell) for n, cell in rows]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([A-Za-z_]+)`", cell)


LAYERS = {f"cbir.{name}": n for n, cell in _table() for name in _names(cell.split("(")[0])}
# the parts of ``cbir.index`` in order: the "owns" cell of its row, "a < b < c"
_INDEX_ROW = re.search(r"^\| \d+ \| `index` \| [^:]*: (.+) \|$", ARCHITECTURE.read_text(), re.M).group(1)
INDEX_PARTS = {f"cbir.index.{name}": i for i, seg in enumerate(_INDEX_ROW.split(" < ")) for name in _names(seg)}
TORCH_FREE = ("cbir.engine", "cbir.copies", "cbir.index", "cbir.eval", "cbir.serve") + tuple(
    m for m, n in LAYERS.items() if n == 0
)
# run_torch paths take torch tensors from the caller: torch is already there when they run
TORCH_OK_FUNCTIONS = {"run_torch"}
# the optional torch backend (lazily imported by the registry, never on the default path)
TORCH_OK_MODULES = ("cbir.engine.backends.torch", "cbir.index.ann.torch_flat", "cbir.engine.gpu_decode")


def layer(module: str) -> tuple[str, int]:
    top = ".".join(module.split(".")[:2])
    assert top in LAYERS, f"{module}: not in ARCHITECTURE.md's layer table"
    return top, LAYERS[top]


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


def sources():
    """(module name, parsed tree) of every module under src/cbir but the package's own __init__
    (its lazy ``__getattr__`` re-exports ``Embedder`` and ``Gallery``)."""
    for path in sorted(SRC.rglob("*.py")):
        if module_name(path) != "cbir":
            yield module_name(path), ast.parse(path.read_text())


def test_the_layer_table_covers_every_module_and_imports_point_down():
    problems = []
    for mod, tree in sources():
        own_top, own = layer(mod)
        for target, func in imports(tree, mod):
            if target.startswith("cbir."):
                t_top, t = layer(target)
                if t > own or (t == own and own > 0 and t_top != own_top):  # layer 0: the core, one flat set
                    problems.append(f"{mod} (layer {own}) imports {target} (layer {t})")
            if (
                (target.split(".")[0] in ("torch", "timm", "torchvision") or target.startswith("cbir.models"))
                and mod.startswith(TORCH_FREE)
                and func not in TORCH_OK_FUNCTIONS
                and mod not in TORCH_OK_MODULES
            ):
                problems.append(f"{mod} imports {target} in {func or 'module scope'}")
    assert not problems, "\n".join(problems)


def index_part(module: str) -> int:
    best = [p for p in INDEX_PARTS if module == p or module.startswith(p + ".")]
    assert best, f"{module}: not among the parts of cbir.index in ARCHITECTURE.md"
    return INDEX_PARTS[max(best, key=len)]


def test_index_parts_point_one_way_and_nothing_imports_in_a_circle():
    problems, graph = [], {}
    for mod, tree in sources():
        targets = {t for t, _ in imports(tree, mod) if t.startswith("cbir.")}
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
    assert not cycles, cycles


def test_bench_is_a_leaf():
    """Nothing in the product imports ``cbir.bench``; only the command line does."""
    users = {
        mod
        for mod, tree in sources()
        if not mod.startswith(("cbir.bench", "cbir.cli"))
        and any(t.startswith("cbir.bench") for t, _ in imports(tree, mod))
    }
    assert not users, users


def test_the_cascade_order_is_written_once():
    """Only ``copies/cascade.py`` names the stages after the k-NN (``windows.look``, ``colour.look``);
    every image search goes through ``cascade.search``."""
    stage_runners = {("windows", "look"), ("colour", "look")}
    written = set()
    for mod, tree in sources():
        if mod == "cbir.copies.cascade":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in stage_runners:
                    written.add(mod)
        for target, _ in imports(tree, mod):  # ``from cbir.copies.windows import look`` counts too
            if tuple(target.split(".")[-2:]) in stage_runners:
                written.add(mod)
    assert not written, f"the cascade's stages are called outside copies/cascade.py: {written}"
    for caller in ("cbir.index.gallery", "cbir.serve.search"):
        tree = dict(sources())[caller]
        calls = {
            (n.func.value.id, n.func.attr)
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
        }
        assert ("cascade", "search") in calls, f"{caller} does not search through cascade.search"


def test_functions_are_short_and_gallery_reads_in_one_sitting():
    long = [
        f"{mod}.{n.name}: {n.end_lineno - n.lineno + 1} lines"
        for mod, tree in sources()
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80
    ]
    assert not long, long
    gallery = (SRC / "index" / "gallery.py").read_text()
    assert len(gallery.splitlines()) <= 400, "index/gallery.py is over 400 lines"


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
