"""Paired comparison of two versions of the service: the same scenarios against this
checkout and another one (a git worktree of an earlier commit), both servers up at once,
in alternating rounds, median of the ratios. For changes that must not cost speed.

    git worktree add /tmp/base HEAD~3
    python -m load_tests.versions --base /tmp/base --rounds 7

Both servers run with this checkout's Python environment and serve this checkout's
models/, bound to 127.0.0.1; every run stops by itself. Needs wrk (apt-get install wrk).
Or two model directories served by this checkout (`--base-model-dir`, no `--base`): what a
model's configuration buys (load_tests/instances.py).
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from load_tests import samples, wrk
from load_tests.client import JSON, Payload
from load_tests.server import ROOT, ServerProcess
from load_tests.stats import ratio_cells


def payloads(model_dir: Path) -> dict[str, Payload]:
    body, headers = samples.v2_binary(32, model_dir)
    return {"v1-fashion-cnn": Payload("/v1/models/fashion-cnn:predict", samples.v1_images(model_dir, 1), JSON),
            "v1-sst2-lstm": Payload("/v1/models/sst2-lstm:predict", samples.v1_texts(1), JSON),
            "v2-binary-fashion-cnn-32": Payload("/v2/models/fashion-cnn/infer", body, headers, items=32),
            "v2-json-fashion-cnn": Payload("/v2/models/fashion-cnn/infer", samples.v2_json(1, model_dir), JSON),
            "v2-json-fashion-cnn-32": Payload("/v2/models/fashion-cnn/infer", samples.v2_json(32, model_dir), JSON,
                                              items=32)}


DEFAULT_SCENARIOS = ["v1-fashion-cnn", "v1-sst2-lstm"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=ROOT, help="the other checkout (the denominator; default: "
                                                                  "this one)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--base-model-dir", type=Path, default=None,
                        help="the model directory the base serves (default: --model-dir)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", nargs="+", default=DEFAULT_SCENARIOS,
                        metavar="SCENARIO", help=f"scenarios (default {' '.join(DEFAULT_SCENARIOS)}; also "
                                                 "v2-binary-fashion-cnn-32, v2-json-fashion-cnn and "
                                                 "v2-json-fashion-cnn-32)")
    parser.add_argument("--workers", default="1", help="worker processes of both servers (default 1)")
    parser.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                        help="a flag both servers get, with `=`: --server-flag=--access-log (repeatable)")
    args = parser.parse_args(argv)
    if not wrk.available():
        parser.error("wrk is not installed (apt-get install wrk)")
    # The same worker count on both sides: a checkout from before workers auto ran one.
    server_args = ["--workers", args.workers, *args.server_flag]
    base_models = (args.base_model_dir or args.model_dir).resolve()
    with ExitStack() as stack:
        base = stack.enter_context(ServerProcess(["--model-dir", str(base_models), *server_args],
                                                 checkout=args.base.resolve()))
        new = stack.enter_context(ServerProcess(["--model-dir", str(args.model_dir.resolve()), *server_args]))
        lines = ["| scenario | this / base req/s per round | median | p99 ratio per round | median |",
                 "|---|---|---|---|---|"]
        known = payloads(args.model_dir)
        unknown = sorted(set(args.only) - set(known))
        if unknown:
            parser.error(f"unknown scenarios {unknown}; known: {sorted(known)}")
        for name in args.only:
            payload = known[name]
            ratios, p99s = [], []
            for i in range(args.rounds):
                order = [(base, "base"), (new, "this")] if i % 2 == 0 else [(new, "this"), (base, "base")]
                got = {side: wrk.closed_loop(server.url, payload, args.concurrency, args.duration)[0]
                       for server, side in order}
                ratios.append(got["this"].requests_per_s / got["base"].requests_per_s)
                p99s.append(got["this"].p99_ms / got["base"].p99_ms)
                print(f"{name} round {i + 1}: {got['this'].requests_per_s:,.0f} / {got['base'].requests_per_s:,.0f} "
                      f"req/s = {ratios[-1]:.3f}; p99 {got['this'].p99_ms:.1f} / {got['base'].p99_ms:.1f} ms",
                      flush=True)
            lines.append(f"| {name} c{args.concurrency} | {ratio_cells(ratios)} | {ratio_cells(p99s)} |")
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
