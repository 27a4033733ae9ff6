"""What a priority level buys: interactive requests beside a backlog of bulk ones.

fashion-cnn (a temporary copy, its manifest given two priority levels, the default the
lower) under a bulk load that keeps its queue full: wrk, many connections each sending
32-image V2 JSON requests at the default level. Beside it one interactive client sends
single images one at a time, in alternating rounds either at priority 1 (ahead of the
backlog) or at the default level (behind it, as a server without priorities serves it).
Printed: the interactive requests' latency and the bulk load's images/s, each way.

    python -m load_tests.priorities --rounds 3 --duration 6

Binds 127.0.0.1; every run stops by itself. Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import orjson

from load_tests import client, samples, wrk
from load_tests.client import JSON, Payload
from load_tests.server import ROOT, alternating, serving_repository
from load_tests.stats import Summary, summarize

MODEL = "fashion-cnn"
WAYS = ("priority 1", "default level")


def repository(home: Path) -> None:
    """fashion-cnn's newest version, its manifest given levels 1 and 2 (2 the default)."""
    folder, _ = samples.latest(ROOT / "models", MODEL)
    shutil.copytree(folder, home / MODEL / folder.name)
    path = home / MODEL / folder.name / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["batching"]["priorities"] = {"levels": 2, "default_level": 2}
    path.write_text(json.dumps(manifest, indent=2))


def interactive(priority: int | None) -> Payload:
    request = orjson.loads(samples.v2_json(1, ROOT / "models"))
    if priority is not None:
        request["parameters"] = {"priority": priority}
    return Payload(f"/v2/models/{MODEL}/infer", orjson.dumps(request), JSON)


def round_of(url: str, way: str, bulk: Payload, concurrency: int, duration_s: float) -> tuple[Summary, Summary]:
    """(the interactive client's summary, the bulk load's) over one run side by side."""
    with tempfile.TemporaryDirectory(prefix="priorities-") as folder:
        script = wrk.write_script(bulk, Path(folder))
        load = wrk.start(script, url + bulk.path, concurrency, duration_s + 2)  # a second each side of ours
        try:
            asyncio.run(asyncio.sleep(1))
            payload = interactive(1 if way == WAYS[0] else None)
            measured, seconds = asyncio.run(client.closed_loop(url, payload, 1, duration_s, warmup_s=0.5))
        finally:
            result = wrk.result_of(load, duration_s + 60)
    return summarize(measured, seconds), wrk.summary_of(result, bulk.items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.priorities", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--bulk-concurrency", type=int, default=32)
    parser.add_argument("--bulk-images", type=int, default=32, help="images per bulk request")
    parser.add_argument("--workers", default="1")
    args = parser.parse_args(argv)
    if not wrk.available():
        parser.error("wrk is not installed (apt-get install wrk)")
    bulk = Payload(f"/v2/models/{MODEL}/infer", samples.v2_json(args.bulk_images, ROOT / "models"), JSON,
                   args.bulk_images)
    got: dict[str, list[tuple[Summary, Summary]]] = {way: [] for way in WAYS}
    with serving_repository(repository, args.workers, "priorities-bench-") as server:
        for i, way in alternating(WAYS, args.rounds):
            mine, theirs = round_of(server.url, way, bulk, args.bulk_concurrency, args.duration)
            if mine.errors or theirs.errors:
                raise SystemExit(f"{way}: errors {mine.errors or theirs.errors}")
            got[way].append((mine, theirs))
            print(f"round {i + 1} interactive at {way}: p50 {mine.p50_ms:.2f} ms, p99 {mine.p99_ms:.2f} ms "
                  f"({mine.ok} requests); bulk {theirs.items_per_s:,.0f} images/s", flush=True)
    print(f"\n| interactive requests at | p50 ms per round | p99 ms per round | median p50 / p99 ms | bulk images/s "
          f"(c{args.bulk_concurrency} x {args.bulk_images}) |")
    print("|---|---|---|---|---|")
    for way in WAYS:
        runs = got[way]
        p50s, p99s = [m.p50_ms for m, _ in runs], [m.p99_ms for m, _ in runs]
        print(f"| {way} | {', '.join(f'{v:.1f}' for v in p50s)} | {', '.join(f'{v:.1f}' for v in p99s)} | "
              f"{statistics.median(p50s):.1f} / {statistics.median(p99s):.1f} | "
              f"{statistics.median(b.items_per_s for _, b in runs):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
