"""HTTP binary tensors against gRPC (unary calls, and a stream: perf_analyzer's
`--streaming`, ModelStreamInfer), on one server, with Triton's perf_analyzer driving all three
(its C++ client: the load generator costs alike for each).

fashion-cnn, one real test image per request and 32 per request (`-b 32`), at c1, c16 and
c64; each cell measured in alternating rounds (HTTP, gRPC, gRPC stream), the ratios to HTTP
per round and their medians reported, so that a noisy machine moves all alike.

    python -m load_tests.protocols [--rounds 3] [--interval-ms 3000] [--images 32]
    python -m load_tests.bench --protocols   (the same, after the benchmark's own scenarios)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from load_tests import perf_analyzer, perf_inputs
from load_tests.perf_analyzer import PROTOCOLS
from load_tests.server import ROOT, ServerProcess

CELLS = [(1, 1), (1, 16), (1, 64), (32, 1), (32, 16), (32, 64)]
"""(images per request, concurrency)."""
MODEL = "fashion-cnn"


def measure(tool: str, server: ServerProcess, protocol: str, data: str, images: int, concurrency: int,
            interval_ms: int) -> dict[str, float]:
    done = perf_analyzer.run(tool, MODEL, server, protocol, concurrency, "-b", str(images), "--input-data", data,
                             "--measurement-interval", str(interval_ms), "--stability-percentage", "30",
                             "--max-trials", "6")
    found = perf_analyzer.figures(done.stdout)
    if "infer_per_s" not in found:
        raise RuntimeError(f"perf_analyzer -i {protocol} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return found


def run(model_dir: Path, rounds: int, interval_ms: int, server_args: list[str] | None = None,
        cells: list[tuple[int, int]] = CELLS) -> list[dict[str, Any]]:
    tool = perf_analyzer.find()
    if tool is None:
        raise SystemExit("perf_analyzer is not here: ../shared/tools/perf_analyzer (as root) or ORTSERVE_PERF_ANALYZER")
    folder, seen_as = perf_analyzer.input_folder(tool)
    folder.mkdir(parents=True, exist_ok=True)
    data = f"{seen_as}/{perf_inputs.write(model_dir, folder, 32)[MODEL].name}"
    rows = []
    # One worker: a gRPC client's calls share one connection, so one worker, while HTTP's
    # connections would spread over all of them; one process compares the transports alone.
    with ServerProcess(["--model-dir", str(model_dir), "--workers", "1", *(server_args or [])]) as server:
        for images, concurrency in cells:
            runs: dict[str, list[dict[str, float]]] = {p: [] for p in PROTOCOLS}
            for number in range(rounds):
                # each round the other way round: neither transport always goes first
                for protocol in PROTOCOLS if number % 2 == 0 else PROTOCOLS[::-1]:
                    runs[protocol].append(measure(tool, server, protocol, data, images, concurrency,
                                                  interval_ms))
            row: dict[str, Any] = {"images": images, "concurrency": concurrency, "rounds": rounds}
            for protocol in PROTOCOLS[1:]:
                ratios = [g["infer_per_s"] / h["infer_per_s"] for h, g in zip(runs["http"], runs[protocol], strict=True)]
                row[f"{protocol}_over_http"] = ratios
                row[f"{protocol}_median_ratio"] = statistics.median(ratios)
            for protocol, measured in runs.items():
                row[protocol] = {key: statistics.median(m[key] for m in measured) for key in measured[0]}
            rows.append(row)
            print(line(row), flush=True)
    return rows


HEADER = ("| images/request | conc | HTTP binary images/s | gRPC | gRPC stream | gRPC / HTTP per round | median | "
          "stream / HTTP per round | median | p50 ms HTTP, gRPC, stream | p99 ms HTTP, gRPC, stream |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def line(row: dict[str, Any]) -> str:
    h, g, st = row["http"], row["grpc"], row["grpc-stream"]

    def rounds(protocol: str) -> str:
        return ", ".join(f"{r:.2f}" for r in row[f"{protocol}_over_http"])

    def each(key: str) -> str:
        return " / ".join(f"{m.get(key, 0):.2f}" for m in (h, g, st))

    return (f"| {row['images']} | {row['concurrency']} | {h['infer_per_s']:,.0f} | {g['infer_per_s']:,.0f} | "
            f"{st['infer_per_s']:,.0f} | {rounds('grpc')} | **{row['grpc_median_ratio']:.2f}** | "
            f"{rounds('grpc-stream')} | **{row['grpc-stream_median_ratio']:.2f}** | {each('p50_ms')} | "
            f"{each('p99_ms')} |")


def markdown(rows: list[dict[str, Any]]) -> str:
    return "\n".join([HEADER, *(line(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.protocols", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer's measurement window")
    parser.add_argument("--images", type=int, choices=sorted({i for i, _ in CELLS}),
                        help="only the cells of this many images per request")
    args = parser.parse_args(argv)
    print(HEADER, flush=True)
    cells = [cell for cell in CELLS if args.images in (None, cell[0])]
    rows = run(args.model_dir, args.rounds, args.interval_ms, cells=cells)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protocols.json").write_text(json.dumps(rows, indent=2))
    (args.out / "protocols.md").write_text(markdown(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
