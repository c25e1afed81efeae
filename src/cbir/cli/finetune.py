"""`cbir finetune`: the paper's two-phase recipe (torch)."""

from __future__ import annotations

import argparse

from cbir.cli.common import print_json


def cmd_finetune(a: argparse.Namespace) -> int:
    from cbir.finetune.recipe import Recipe, finetune

    r = Recipe(
        arch=a.arch,
        data=a.data,
        out=a.out,
        pretrained=a.pretrained and not a.weights,
        weights=a.weights,
        seed=a.seed,
        split=a.split,
        head_epochs=a.head_epochs,
        head_lr=a.head_lr,
        ft_epochs=a.ft_epochs,
        ft_lr=a.ft_lr,
        unfreeze_top=a.unfreeze_top,
        batch_size=a.batch_size,
        image_size=a.image_size,
        device=a.device,
    )
    meta = finetune(r, progress=not a.json)
    if a.json:
        print_json(meta)
    else:
        last = meta["history"][-1] if meta["history"] else {}
        print(
            f"wrote {a.out}: {meta['arch']}, {len(meta['classes'])} classes, final val acc {last.get('val_acc', float('nan')):.4f}; "
            f"export with: cbir export --weights {a.out} --block 7 -o model.onnx"
        )
    return 0


def register(sub) -> None:
    f = sub.add_parser("finetune", help="the paper's two-phase fine-tuning recipe (torch)")
    f.add_argument("--arch", required=True)
    f.add_argument("--data", required=True, help="class-per-folder images")
    f.add_argument("--out", required=True, help="checkpoint to write (resumable from OUT.resume.pt)")
    fw = f.add_mutually_exclusive_group()
    fw.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from ImageNet weights (default; --no-pretrained: random weights)",
    )
    fw.add_argument("--weights", help="start from a checkpoint instead")
    f.add_argument("--seed", type=int, default=0, help="split and training seed (same split as bench accuracy)")
    f.add_argument("--split", type=float, default=0.8)
    f.add_argument("--head-epochs", type=int, default=5)
    f.add_argument("--head-lr", type=float, default=1e-3)
    f.add_argument("--ft-epochs", type=int, default=15)
    f.add_argument("--ft-lr", type=float, default=1e-5)
    f.add_argument("--unfreeze-top", type=int, default=80, help="parameter layers unfrozen in phase 2 (default 80)")
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--image-size", type=int)
    f.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    f.add_argument("--json", action="store_true")
    f.set_defaults(fn=cmd_finetune)
