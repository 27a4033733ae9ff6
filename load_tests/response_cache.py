"""What the response cache gives and costs: fashion-cnn (a copy of models/ whose manifest
enables the cache), V2 JSON single images at concurrency C, wrk, two servers up at once in
alternating rounds: one without a cache, one with `--response-cache-bytes`.

Each request's first pixel is a counter, so the inputs are as distinct as the case says:
- `misses`: every request a new input, on both servers: what keeping answers costs when
  none is ever asked for again (the lookup, the digest, the copy kept);
- `hits`: inputs drawn in turn from a pool of `--pool` (64), against the cache: all but the
  first of each answered from it.

    python -m load_tests.response_cache --rounds 5 --duration 4

Binds 127.0.0.1; every run stops by itself. Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from load_tests import samples, wrk
from load_tests.server import ROOT, ServerProcess
from load_tests.stats import Summary, ratio_cells

MODEL = "fashion-cnn"
PATH = f"/v2/models/{MODEL}/infer"
RUN_INPUTS = 200_000
"""Counter values set aside for each run: more than a run sends (seconds at ~10,000 req/s)."""

# One request per call (and wrk.SUMMARY_LUA after it): the body with its first pixel replaced by the counter, an integer
# (exact in FP32 up to 2**24: distinct inputs stay distinct); `pool` 0: never repeated.
_SCRIPT = """
local prefix, suffix = %(prefix)s, %(suffix)s
local pool, counter = %(pool)d, %(start)d
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  counter = counter + 1
  local n = counter
  if pool > 0 then n = counter %% pool end
  return wrk.format(nil, %(path)s, nil, prefix .. string.format("%%d", n) .. suffix)
end
"""


def script(folder: Path, body: bytes, pool: int, start: int) -> Path:
    """wrk's Lua sending `body` with its first pixel varied (`start`: where the counter begins,
    so that each run's inputs are new to the server where the case says so)."""
    marker = b'"data":['
    head = body.index(marker) + len(marker)
    comma = body.index(b",", head)
    path = folder / f"cache-{pool}-{start}.lua"
    path.write_text(_SCRIPT % {"prefix": json.dumps(body[:head].decode()), "suffix": json.dumps(body[comma:].decode()),
                               "pool": pool, "start": start, "path": json.dumps(PATH)} + wrk.SUMMARY_LUA)
    return path


def run(url: str, lua: Path, concurrency: int, seconds: float) -> Summary:
    return wrk.summary_of(wrk.result_of(wrk.start(lua, url + PATH, concurrency, seconds), seconds + 60), 1)


def hits(url: str) -> tuple[int, int]:
    """The model's (cache hits, misses) so far (none on the server without a cache)."""
    time.sleep(0.5)  # other workers' statistics are shared every 0.2 s (app/observability/worker_stats.py)
    found = httpx.get(f"{url}/v2/models/{MODEL}/stats", timeout=30).json()["model_stats"][0]["inference_stats"]
    return found["cache_hit"]["count"], found["cache_miss"]["count"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.response_cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pool", type=int, default=64, help="distinct inputs of the `hits` case")
    parser.add_argument("--cache-bytes", type=int, default=64 << 20)
    parser.add_argument("--workers", default="1")
    args = parser.parse_args(argv)
    if not wrk.available():
        parser.error("wrk is not installed (apt-get install wrk)")
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cache-bench-") as folder:
        home = Path(folder) / "models"
        shutil.copytree(ROOT / "models" / MODEL, home / MODEL)
        for manifest in (home / MODEL).glob("*/manifest.json"):
            facts = json.loads(manifest.read_text())
            manifest.write_text(json.dumps({**facts, "response_cache": True}))
        common = ["--model-dir", str(home), "--workers", args.workers]
        plain = stack.enter_context(ServerProcess(common))
        cached = stack.enter_context(ServerProcess([*common, "--response-cache-bytes", str(args.cache_bytes)]))
        body = samples.v2_json(1, ROOT / "models")
        ratios: dict[str, list[float]] = {"misses": [], "hits": []}
        rates: dict[str, list[float]] = {"without": [], "misses": [], "hits": []}
        hit_rates: dict[str, list[float]] = {"misses": [], "hits": []}
        start = 0
        if args.rounds * 8 * RUN_INPUTS >= 1 << 24:
            parser.error("too many rounds: the counter would pass what FP32 holds exactly")
        for i in range(args.rounds):
            for case, pool in (("misses", 0), ("hits", args.pool)):
                got = {}
                order = [("without", plain), (case, cached)]
                for side, server in order if i % 2 == 0 else order[::-1]:
                    for measured in (False, True):  # a warm-up, then the measured run
                        start += RUN_INPUTS  # inputs new to the server, but for the pool's
                        lua = script(Path(folder), body, pool if side == "hits" else 0, start)
                        if measured and server is cached:
                            before = hits(server.url)
                        got[side] = run(server.url, lua, args.concurrency, args.duration if measured else 1.0)
                    if server is cached:  # what the measured run found in the cache: the case is what it says
                        (hit, miss), (hit_before, miss_before) = hits(server.url), before
                        hit_rates[case].append((hit - hit_before) / max(1, hit - hit_before + miss - miss_before))
                ratios[case].append(got[case].requests_per_s / got["without"].requests_per_s)
                rates[case].append(got[case].requests_per_s)
                rates["without"].append(got["without"].requests_per_s)
                print(f"round {i + 1} {case}: {got[case].requests_per_s:,.0f} / {got['without'].requests_per_s:,.0f} "
                      f"req/s = {ratios[case][-1]:.2f}; p50 {got[case].p50_ms:.2f} / {got['without'].p50_ms:.2f} ms",
                      flush=True)
        hit, miss = hits(cached.url)
    print(f"\nthe cached server's statistics over every run: {hit:,} hits, {miss:,} misses")
    print(f"\n| case, c{args.concurrency}, workers {args.workers} | hits | req/s (median) | / no cache, per round "
          "| median |")
    print("|---|---|---|---|---|")
    for case in ("misses", "hits"):
        print(f"| {case} | {min(hit_rates[case]):.0%}-{max(hit_rates[case]):.0%} | "
              f"{statistics.median(rates[case]):,.0f} | {ratio_cells(ratios[case])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
