"""Issue 25's target on a gallery like the one it describes: 1,000 real Corel-1K embeddings + 300,000
distractors clustered around directions near them (Lite0 Block 7 GAP), `--factory auto --memory-budget
200MB --target-recall 0.95`; queries are real edited photos (`cbir bench copies`, 700): 100 to tune on,
the other 600 to measure. Prints recall@10 by nprobe for held-out gallery vectors and for the real
queries, then what each basis chose and the truth on the 600.

    python benchmarks/query_shift_corel.py MODEL.onnx CORel_DIR COPIES_DIR WORKDIR
"""

import subprocess
import sys
from pathlib import Path

import numpy as np

from cbir.index.ann import maintain, tuning
from cbir.index.gallery import Gallery

model, corel, copies, work = sys.argv[1:5]
work = Path(work)
work.mkdir(parents=True, exist_ok=True)


def cbir(*args):
    r = subprocess.run([sys.executable, "-m", "cbir", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return r.stdout


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


if not (work / "corel.npy").is_file():
    cbir("embed", corel, "--model", model, "-o", str(work / "corel.npy"), "--paths-out", str(work / "corel.txt"))
    cbir("embed", copies, "--model", model, "-o", str(work / "copies.npy"), "--paths-out", str(work / "copies.txt"))
real = np.load(work / "corel.npy")
rng = np.random.default_rng(0)
d = real.shape[1]
centres = unit(real[rng.choice(len(real), 300, replace=False)] + 0.5 * rng.normal(size=(300, d)) / np.sqrt(d))
distract = unit(np.repeat(centres, 1000, axis=0) + 0.9 * rng.normal(size=(300_000, d)).astype(np.float32) / np.sqrt(d))
np.save(work / "gallery.npy", np.concatenate([real, distract]))
paths = Path(work / "corel.txt").read_text().splitlines() + [f"/distractor/{i:06d}" for i in range(len(distract))]
Path(work / "gallery.txt").write_text("\n".join(paths) + "\n")
q = np.load(work / "copies.npy")
order = rng.permutation(len(q))
np.save(work / "q_tune.npy", q[order[:100]])
q_eval = q[order[100:]]
idx = work / "idx"
if idx.exists():
    import shutil

    shutil.rmtree(idx)
cbir(
    "index",
    "build",
    "--from-vectors",
    str(work / "gallery.npy"),
    "--paths",
    str(work / "gallery.txt"),
    "--model",
    model,
    "--index",
    str(idx),
    "--factory",
    "auto",
    "--memory-budget",
    "200MB",
    "--target-recall",
    "0.95",
)
g = Gallery(idx)
index = g.index
_, truth = maintain.exact_topk(g, g.postprocess_queries(q_eval), 10)
held_ids, held = maintain.sample_vectors(g.store, g.root, 500, seed=1)
_, htruth = maintain.exact_topk(g, held, 11)
htruth = np.stack([r[r != o][:10] for r, o in zip(htruth, held_ids)])
print(
    f"auto: {g.config['index_factory']}, {g.config['index_bytes'] / 1e6:.0f} MB (Flat would need {len(paths) * d * 4 / 1e6:.0f} MB)"
)
print("| nprobe | held-out gallery vectors | real queries (600) |")
for nprobe in (1, 2, 4, 8, 16, 32, 64):
    tuning.set_search_params(index, {"nprobe": nprobe})
    rh = tuning.recall_at_k(htruth, tuning.search_excluding(index, held, 10, held_ids))
    rq = tuning.recall_at_k(truth, index.search(g.postprocess_queries(q_eval), 10)[1])
    print(f"| {nprobe} | {rh:.3f} | {rq:.3f} |")
for label, args in (("gallery", []), ("queries", ["--queries", str(work / "q_tune.npy")])):
    if args:
        cbir("index", "tune", str(idx), "--target-recall", "0.95", *args)
    g = Gallery(idx)
    t, params = g.config["tuning"], g.config["search"]
    tuning.set_search_params(g.index, params)
    got = g.index.search(g.postprocess_queries(q_eval), 10)[1]
    ms = tuning.query_ms(g.index, g.postprocess_queries(q_eval), 10, 3)
    print(
        f"tuned on {label} ({t['queries']}): {params}, estimate {t['recall_at_10']} (95 % {t['recall_ci95'][0]}–"
        f"{t['recall_ci95'][1]}), true recall@10 on the 600 other real queries {tuning.recall_at_k(truth, got):.3f}, "
        f"{ms:.3f} ms/query (batch 600)"
    )
