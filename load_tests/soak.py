"""Soak test: minutes of mixed load, with a share of hostile requests, watching for leaks,
server errors and latency drift. Not run in CI.

    python -m load_tests.soak --minutes 10

Starts the service on a free loopback port and drives it with a closed loop of asyncio
workers, each picking its next request at random: both models, V1 and V2, JSON and binary
tensors, plus hostile requests (over-wide V2 text, texts that expand under NFKC, 16-bit
PNGs, damaged base64, overflowing shapes). Reports per minute: requests, p99 of the
ordinary requests, answers by status; the server's resident memory over time; and the
three checks of the hardening issue: RSS growth after warm-up under 50 MB, no 5xx,
p99 drift under 20%. The run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from load_tests import samples
from load_tests.client import JSON, Payload
from load_tests.server import ROOT, ServerProcess
from load_tests.stats import percentile


@dataclass(frozen=True)
class Kind:
    name: str
    payload: Payload
    weight: float
    hostile: bool = False


def _png16(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint16) * 257).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def kinds(model_dir: Path) -> list[Kind]:
    image = samples.images(samples.image_spec(model_dir))[0]
    binary, headers = samples.v2_binary(8, model_dir)
    text_ids = {"inputs": [{"name": "token_ids", "shape": [1, 3], "datatype": "INT64", "data": [5, 6, 7]},
                           {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [3]}]}
    wide = {"inputs": [{"name": "token_ids", "shape": [1, 100_000], "datatype": "INT64", "data": [5] * 100_000},
                       {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [1]}]}
    overflow = {"inputs": [{"name": "pixels", "shape": [2**40, 2**40, 28, 28], "datatype": "FP32", "data": [0.0]}]}
    return [
        Kind("v1 image", Payload("/v1/models/fashion-cnn:predict", samples.v1_images(model_dir, 1), JSON), 30),
        Kind("v1 text", Payload("/v1/models/sst2-lstm:predict", samples.v1_texts(1), JSON), 30),
        Kind("v2 json 4 images", Payload("/v2/models/fashion-cnn/infer", samples.v2_json(4, model_dir), JSON), 10),
        Kind("v2 binary 8 images", Payload("/v2/models/fashion-cnn/infer", binary, headers), 10),
        Kind("v2 json text", Payload("/v2/models/sst2-lstm/infer", orjson.dumps(text_ids), JSON), 10),
        Kind("hostile: wide V2 text", Payload("/v2/models/sst2-lstm/infer", orjson.dumps(wide), JSON), 1, True),
        Kind("hostile: NFKC text", Payload("/v1/models/sst2-lstm:predict",
                                           orjson.dumps({"instances": ["\ufdfa" * 50_000]}), JSON), 1, True),
        Kind("hostile: 16-bit PNG", Payload("/v1/models/fashion-cnn:predict",
                                            orjson.dumps({"instances": [{"b64": _png16(image)}]}), JSON), 1, True),
        Kind("hostile: bad base64", Payload("/v1/models/fashion-cnn:predict",
                                            orjson.dumps({"instances": [{"b64": "not base64!"}]}), JSON), 1, True),
        Kind("hostile: overflowing shape", Payload("/v2/models/fashion-cnn/infer", orjson.dumps(overflow), JSON),
             1, True),
    ]


@dataclass
class Record:
    minute: int
    kind: Kind
    status: int
    seconds: float


async def drive(url: str, choices: list[Kind], concurrency: int, seconds: float) -> list[Record]:
    records: list[Record] = []
    started = time.monotonic()
    weights = [k.weight for k in choices]
    rng = random.Random(0)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def worker() -> None:
            while (now := time.monotonic()) - started < seconds:
                kind = rng.choices(choices, weights)[0]
                begin = time.perf_counter()
                try:
                    async with session.post(url + kind.payload.path, data=kind.payload.body,
                                            headers=kind.payload.headers) as response:
                        await response.read()
                        status = response.status
                except (TimeoutError, aiohttp.ClientError):
                    status = 0
                records.append(Record(int((now - started) // 60), kind, status, time.perf_counter() - begin))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def watch_memory(server: ServerProcess, seconds: float, every_s: float) -> list[tuple[float, float]]:
    """The server's resident MB every `every_s`: its workers' too (with `workers auto` the
    process itself only supervises, and its own size stood still while theirs was not read)."""
    started, points = time.monotonic(), []
    while (elapsed := time.monotonic() - started) < seconds:
        points.append((elapsed, server.resident_mb()))
        await asyncio.sleep(every_s)
    return points


def report(records: list[Record], memory: list[tuple[float, float]], minutes: float) -> str:
    by_minute: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_minute[r.minute].append(r)
    lines = ["| minute | requests | p99 ms (ordinary) | answers by status |", "|---|---|---|---|"]
    p99s = {}
    for minute in sorted(by_minute):
        rows = by_minute[minute]
        ordinary = sorted(r.seconds * 1000 for r in rows if not r.kind.hostile and 200 <= r.status < 300)
        p99s[minute] = percentile(ordinary, 99)
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(Counter(r.status for r in rows).items()))
        lines.append(f"| {minute + 1} | {len(rows):,} | {p99s[minute]:.1f} | {statuses} |")
    by_kind = Counter((r.kind.name, r.status) for r in records)
    lines += ["", "| request | status | count |", "|---|---|---|"]
    lines += [f"| {name} | {status} | {count:,} |" for (name, status), count in sorted(by_kind.items())]
    warm = [m for t, m in memory if t >= 60] or [m for _, m in memory]
    full_minutes = [m for m in sorted(p99s) if m >= 1 and (m + 1) * 60 <= minutes * 60]
    reference = statistics.median(p99s[m] for m in full_minutes) if full_minutes else float("nan")
    drift = max((abs(p99s[m] - reference) / reference for m in full_minutes), default=float("nan"))
    server_errors = sum(1 for r in records if r.status >= 500 or r.status == 0)
    ordinary_4xx = sum(1 for r in records if not r.kind.hostile and r.status >= 400)
    lines += ["", "resident memory (MB), every 30 s: "
              + ", ".join(f"{m:.0f}" for t, m in memory if int(t) % 30 == 0 or t == memory[-1][0]),
              "",
              f"RSS growth after the first minute: {warm[-1] - warm[0]:+.1f} MB (check: < 50 MB)",
              f"5xx or failed connections: {server_errors} (check: 0); 4xx of ordinary requests: {ordinary_4xx}",
              f"p99 drift, minutes 2-{int(minutes)}, largest against their median ({reference:.1f} ms): "
              f"{drift * 100:.0f}% (check: < 20%)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    with ServerProcess(["--model-dir", str(args.model_dir)]) as server:
        assert server.process is not None

        async def run() -> tuple[list[Record], list[tuple[float, float]]]:
            load = drive(server.url, kinds(args.model_dir), args.concurrency, seconds)
            return await asyncio.gather(load, watch_memory(server, seconds, 5.0))

        records, memory = asyncio.run(run())
    print(f"soak: {args.minutes:g} min, {args.concurrency} closed-loop workers, mixed requests\n")
    print(report(records, memory, args.minutes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
