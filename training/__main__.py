"""Command line: `python -m training build|STEP --data-dir DIR --model NAME|all`.

build runs train, prune, distill, export, quantize, evaluate and package in turn."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from app.manifest import latest_version, load_manifest
from training import report
from training.data import download_fashion_mnist
from training.pipeline import RECIPES, STEPS, run_step
from training.workspace import Workspace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("step", choices=("build", *STEPS),
                        help="build runs every step; a step name runs that step alone")
    parser.add_argument("--model", default="all", choices=(*RECIPES, "all"))
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="folder holding fashion-mnist/ and sst2/ (or the files themselves)")
    parser.add_argument("--out", type=Path, default=Path("models"), help="artifact root (default: models)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs"), help="checkpoints between steps")
    parser.add_argument("--version", type=int, default=None, help="artifact version (default: next free)")
    parser.add_argument("--epochs", type=int, default=None, help="override training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="override the student's epochs after pruning (with and without distillation)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="override the teacher's epochs")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training items")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--download", action="store_true",
                        help="fetch Fashion-MNIST into --data-dir first (checks sha256)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.download:
        download_fashion_mnist(args.data_dir / "fashion-mnist")
    names = list(RECIPES) if args.model == "all" else [args.model]
    steps = STEPS if args.step == "build" else (args.step,)
    overrides = {k: v for k, v in {"epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
                                   "teacher_epochs": args.teacher_epochs,
                                   "train_limit": args.train_limit, "seed": args.seed}.items()
                 if v is not None}
    built = []
    for name in names:
        recipe = RECIPES[name]
        config = dataclasses.replace(recipe.config_type(), **overrides)
        ws = Workspace(args.work_dir / name, args.data_dir)
        for step in steps:
            print(f"== {name}: {step}", flush=True)
            run_step(step, recipe, ws, config, args.out, args.version)
        if "package" in steps:
            target = latest_version(args.out / name)
            assert target is not None, "package wrote no version folder"
            built.append(target)
    for target in built:
        manifest = load_manifest(target)
        print(f"\n{manifest.name} v{manifest.version} -> {target}")
        print(report.text_table(report.HEADER, report.summary_rows(manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
