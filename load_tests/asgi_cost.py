"""What one request costs the event loop, without the network: the same V2 JSON body sent
N times straight to the ASGI callable of the parse-only ceiling and of the service (one
worker, in this process), the loop thread's CPU microseconds per request. With --profile, cProfile's
table of the service's run (its times inflated by the profiler; the order is what counts).

    python -m load_tests.asgi_cost [--requests 5000] [--images 1] [--concurrency 1] [--profile]
                                   [--setting tracing=true]

One after another (the default), the service answers each request inline on the loop (an
idle model runs a one-row batch there), so its figure includes ONNX Runtime's run of that
batch. With --concurrency 64, requests go in waves of 64 and batches form and run on the
model's threads as under load: the loop's share alone.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from pathlib import Path
from typing import Any

from load_tests import samples
from load_tests.server import ROOT

PATH = "/v2/models/fashion-cnn/infer"


async def _call(app: Any, body: bytes) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays: nothing more arrives
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if sent[0]["status"] != 200:
        raise SystemExit(f"{PATH} answered {sent[0]['status']}: {sent[1].get('body', b'')[:200]!r}")


async def _per_request_us(app: Any, body: bytes, requests: int, concurrency: int = 1,
                          profile: cProfile.Profile | None = None) -> float:
    async def wave() -> None:
        if concurrency == 1:
            await _call(app, body)
        else:
            await asyncio.gather(*(_call(app, body) for _ in range(concurrency)))

    waves = max(1, requests // concurrency)
    for _ in range(min(300, waves)):  # warm: caches, the allocator, the first batches
        await wave()
    if profile is not None:
        profile.enable()
    # The loop's own CPU time: the service's batches run on other threads while the loop
    # waits, which wall time would count.
    started = time.thread_time()
    for _ in range(waves):
        await wave()
    elapsed = time.thread_time() - started
    if profile is not None:
        profile.disable()
    return elapsed / (waves * concurrency) * 1e6


async def measure(model_dir: Path, requests: int, images: int, profile: bool,
                  settings: dict[str, str] | None = None, concurrency: int = 1) -> dict[str, float]:
    from app.main import create_app
    from app.settings import Settings
    from load_tests.ceiling import app as ceiling

    body = samples.v2_json(images, model_dir)
    figures = {"ceiling": await _per_request_us(ceiling, body, requests, concurrency)}
    service = create_app(Settings(**{"model_dir": model_dir, "workers": 1, "grpc": False, "log_level": "warning",
                                     **(settings or {})}))
    profiler = cProfile.Profile() if profile else None
    async with service.router.lifespan_context(service):
        figures["service"] = await _per_request_us(service, body, requests, concurrency, profiler)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.asgi_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests sent at once, in waves (batches form as under load); 1: one after another")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's table of the service")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the service (e.g. tracing=true, trace_sample=0.1); repeatable")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.setting)
    figures = asyncio.run(measure(args.model_dir, args.requests, args.images, args.profile, settings,
                                  args.concurrency))
    sent = "in a row" if args.concurrency == 1 else f"in waves of {args.concurrency}"
    print(f"| server | loop CPU µs per request ({args.images} image(s), V2 JSON, {args.requests} {sent}) |")
    print("|---|---|")
    for name, us in figures.items():
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
