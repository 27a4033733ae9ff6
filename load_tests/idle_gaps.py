"""What an idle pause between batches costs ONNX Runtime: CPU per batch after gaps.

    python -m load_tests.idle_gaps            # prints a table; about 10 seconds

An inference thread that waits between batches (for the next batch, or for the GIL)
lets its CPU go idle. On the virtual machines measured here the next run then takes
much more CPU than a run straight after another one (cold caches, a core that the host
gave away or clocked down). The batcher therefore keeps the next batch ready behind the
running one on a single inference thread (`inference_threads`, docs/benchmarks.md).
Rounds alternate the gaps so that a noisy neighbour does not favour one of them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from app.runtime import CPU, OrtModel, OrtOptions
from load_tests import samples


def cpu_per_batch(model: OrtModel, feed: dict[str, np.ndarray], gap_s: float, runs: int) -> float:
    """Mean CPU seconds of this thread per run, sleeping `gap_s` between runs."""
    start = time.thread_time()
    for _ in range(runs):
        model.run(feed)
        if gap_s:
            time.sleep(gap_s)
    return (time.thread_time() - start) / runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.idle_gaps", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--runs", type=int, default=200, help="runs per gap per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gaps-ms", type=float, nargs="+", default=[0, 0.2, 1, 5])
    args = parser.parse_args(argv)

    folder, manifest = samples.latest(args.model_dir, "fashion-cnn")
    # The service's own session (same options), with one intra-op thread
    model = OrtModel(folder / manifest.variants[args.variant].file, OrtOptions([CPU], intra_op_threads=1))
    feed = {manifest.inputs[0].name: samples.normalized(args.batch, args.model_dir)}
    for _ in range(20):
        model.run(feed)
    measured: dict[float, list[float]] = {gap: [] for gap in args.gaps_ms}
    for _ in range(args.rounds):
        for gap in args.gaps_ms:
            measured[gap].append(cpu_per_batch(model, feed, gap / 1000, args.runs))
    back_to_back = statistics.median(measured[min(args.gaps_ms)])
    print(f"fashion-cnn {args.variant}, batch {args.batch}, 1 intra-op thread, "
          f"{args.runs} runs x {args.rounds} rounds per gap")
    print("| gap between runs | CPU ms per batch (median of rounds) | vs back to back |")
    print("|---|---|---|")
    for gap, values in measured.items():
        cpu = statistics.median(values)
        print(f"| {gap:g} ms | {cpu * 1000:.2f} | {cpu / back_to_back:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
