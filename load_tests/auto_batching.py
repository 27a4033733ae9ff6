"""Batching chosen by measurement against the hand-tuned manifests: the shipped models
served twice, side by side, by this checkout: once from their manifests (batching chosen
at build time), once as drop-ins (the same ONNX file, a config.json with the task, labels
and preprocessing, and no batching, so that it is measured at load, app/batch_sizing.py).
Alternating rounds at c64 (throughput) and c1 (latency), median of the ratios.

    python -m load_tests.auto_batching --rounds 7

Bound to 127.0.0.1; every run stops by itself. Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from app.manifest import latest_version, load_manifest
from app.model_facts import CONFIG_JSON
from load_tests import samples, wrk
from load_tests.client import JSON, Payload
from load_tests.server import ROOT, ServerProcess
from load_tests.stats import ratio_cells

MODELS = ("fashion-cnn", "sst2-lstm")


def as_drop_ins(model_dir: Path, into: Path) -> None:
    """Each shipped model's newest version as a drop-in: its CPU variant's file and a
    config.json of what the graph cannot say; the batching left to be measured."""
    for name in MODELS:
        folder = latest_version(model_dir / name)
        assert folder is not None, f"no version of {name} under {model_dir}"
        m = load_manifest(folder)
        variant = m.preferred_variant.get("cpu", "fp32")
        target = into / name / folder.name
        target.mkdir(parents=True)
        shutil.copyfile(folder / m.variants[variant].file, target / "model.onnx")
        for file in m.extra_files:
            shutil.copyfile(folder / file, target / file)
        facts = {"task": m.task, "labels": m.labels, "scores": m.scores, "description": m.description,
                 "preprocessing": m.preprocessing.model_dump() if m.preprocessing else None}
        (target / CONFIG_JSON).write_text(json.dumps(facts, indent=2))


def batching_of(server: ServerProcess, name: str) -> str:
    with urllib.request.urlopen(f"{server.url}/v2/models/{name}/config", timeout=10) as answer:
        config = json.load(answer)
    delay = config["dynamic_batching"]["max_queue_delay_microseconds"] / 1000
    return f"max_batch_size {config['max_batch_size']}, delay {delay:g} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.auto_batching", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--auto-first", action="store_true",
                        help="start the drop-in server first (the second one started measured up to 5%% faster "
                             "in an A/A run)")
    parser.add_argument("--control", action="store_true",
                        help="serve the manifests on both sides (an A/A run: the noise floor of the ratios)")
    args = parser.parse_args(argv)
    if not wrk.available():
        parser.error("wrk is not installed (apt-get install wrk)")
    model_dir = args.model_dir.resolve()
    payloads = {"fashion-cnn": Payload("/v1/models/fashion-cnn:predict", samples.v1_images(model_dir, 1), JSON),
                "sst2-lstm": Payload("/v1/models/sst2-lstm:predict", samples.v1_texts(1), JSON)}
    with ExitStack() as stack:
        drop_ins = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="auto-batching-")))
        as_drop_ins(model_dir, drop_ins)
        auto_args = ["--model-dir", str(model_dir if args.control else drop_ins)]
        if args.auto_first:
            auto = stack.enter_context(ServerProcess(auto_args))
        tuned = stack.enter_context(ServerProcess(["--model-dir", str(model_dir)]))
        if not args.auto_first:
            auto = stack.enter_context(ServerProcess(auto_args))
        lines = ["| model | manifest's batching | measured batching | c64 auto / manifest req/s per round | "
                 "median | c1 auto / manifest p50 per round | median |", "|---|---|---|---|---|---|---|"]
        for name in MODELS:
            payload = payloads[name]
            throughput, latency = [], []
            for i in range(args.rounds):
                order = [(tuned, "tuned"), (auto, "auto")] if i % 2 == 0 else [(auto, "auto"), (tuned, "tuned")]
                c64 = {side: wrk.closed_loop(s.url, payload, 64, args.duration)[0] for s, side in order}
                c1 = {side: wrk.closed_loop(s.url, payload, 1, args.duration)[0] for s, side in order}
                throughput.append(c64["auto"].requests_per_s / c64["tuned"].requests_per_s)
                latency.append(c1["auto"].p50_ms / c1["tuned"].p50_ms)
                print(f"{name} round {i + 1}: c64 {c64['auto'].requests_per_s:,.0f} / "
                      f"{c64['tuned'].requests_per_s:,.0f} req/s = {throughput[-1]:.3f}; c1 p50 "
                      f"{c1['auto'].p50_ms:.2f} / {c1['tuned'].p50_ms:.2f} ms = {latency[-1]:.3f}", flush=True)
            lines.append(f"| {name} | {batching_of(tuned, name)} | {batching_of(auto, name)} | "
                         f"{ratio_cells(throughput)} | {ratio_cells(latency)} |")
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
