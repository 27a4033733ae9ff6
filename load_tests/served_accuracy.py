"""Accuracy of the served models over HTTP on the full test sets, and the server CPU each
item costs, for this checkout and (optionally) another one, measured in the same run.

    python -m load_tests.served_accuracy --data-dir ../shared/data
    python -m load_tests.served_accuracy --data-dir ../shared/data --base /tmp/base --base-model-dir /tmp/base/models

Sends every Fashion-MNIST test image and every labelled SST-2 test sentence through the V1
endpoints, 64 instances per request, one request at a time, in alternating rounds between
the two servers; reports accuracy and the median server CPU per item (user + system time
of the server process, from /proc). Servers bind 127.0.0.1 and stop by themselves.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import orjson

import app.datasets as data
from load_tests.server import ROOT, ServerProcess

BATCH = 64


def test_sets(data_dir: Path) -> dict[str, tuple[list[object], np.ndarray]]:
    _, fashion = data.load_fashion_mnist(data_dir)
    _, _, sst2 = data.load_sst2(data_dir)
    return {"fashion-cnn": ([image.tolist() for image in fashion.images], fashion.labels),
            "sst2-lstm": (list(sst2.texts), np.asarray(sst2.labels))}


def score(url: str, model: str, instances: list[object]) -> list[int]:
    predicted: list[int] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(instances), BATCH):
            body = orjson.dumps({"instances": instances[start : start + BATCH]})
            response = client.post(f"/v1/models/{model}:predict", content=body)
            response.raise_for_status()
            predicted += [p["index"] for p in response.json()["predictions"]]
    return predicted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.served_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--base", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--base-model-dir", type=Path, help="its models (default: its models/)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sets = test_sets(args.data_dir)
    servers = {"this": (ROOT, args.model_dir)}
    if args.base:
        servers["base"] = (args.base.resolve(), (args.base_model_dir or args.base / "models").resolve())
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    with ExitStack() as stack:
        running = {name: stack.enter_context(ServerProcess(["--model-dir", str(models)], checkout=checkout))
                   for name, (checkout, models) in servers.items()}
        for round_ in range(args.rounds):
            order = list(running) if round_ % 2 == 0 else list(reversed(running))
            for name in order:
                server = running[name]
                for model, (instances, labels) in sets.items():
                    before = server.cpu_seconds()
                    predicted = score(server.url, model, instances)
                    cpu = server.cpu_seconds() - before
                    entry = results.setdefault((name, model), {"accuracy": [], "cpu_us_per_item": []})
                    entry["accuracy"].append(float((np.asarray(predicted) == labels).mean()))
                    entry["cpu_us_per_item"].append(cpu / len(instances) * 1e6)
    lines = ["| server | model | items | accuracy | server CPU µs/item, median (rounds) |", "|---|---|---|---|---|"]
    for (name, model), entry in sorted(results.items()):
        accuracies = set(entry["accuracy"])
        accuracy = ", ".join(f"{a:.2%}" for a in sorted(accuracies))
        cpu = entry["cpu_us_per_item"]
        lines.append(f"| {name} | {model} | {len(sets[model][0]):,} | {accuracy} | "
                     f"{statistics.median(cpu):.0f} ({', '.join(f'{c:.0f}' for c in cpu)}) |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
