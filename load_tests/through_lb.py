"""Load through a load balancer in front of replicas (docker-compose.replicas.yml), bounded
in time, answering two questions:

    python -m load_tests.through_lb --url http://127.0.0.1:8000 --seconds 10 --concurrency 64
    python -m load_tests.through_lb --url http://127.0.0.1:8000 --seconds 90 --every-request --out r.json

The first measures throughput and latency of single-image requests with wrk (as
load_tests.bench does). The second (`--every-request`) sends them with the asyncio client,
which records each request's status, so that a rolling restart run beside it
(deploy/rolling_restart.sh) can be judged by the number of failed requests: any status
but 200, and any connection error, counts. Only 127.0.0.1 addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from urllib.parse import urlparse

from load_tests import samples, wrk
from load_tests.client import JSON, Payload, closed_loop
from load_tests.server import ROOT
from load_tests.stats import summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.through_lb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the load balancer, e.g. http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--every-request", action="store_true",
                        help="record every request's status (asyncio client) instead of measuring with wrk")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args(argv)
    if urlparse(args.url).hostname != "127.0.0.1":
        parser.error("load goes to 127.0.0.1 only")
    payload = Payload("/v1/models/fashion-cnn:predict", samples.v1_images(ROOT / "models", 1), JSON)
    if args.every_request:
        found, seconds = asyncio.run(closed_loop(args.url, payload, args.concurrency, args.seconds, warmup_s=0))
        summary = summarize(found, seconds)  # every failure counted by status; 'connection' for errors
    else:
        summary, _ = wrk.closed_loop(args.url, payload, args.concurrency, args.seconds)
    result = {"requests": summary.requests, "ok": summary.ok, "failed": summary.errors,
              "seconds": round(summary.duration_s, 2), "concurrency": args.concurrency,
              "requests_per_s": round(summary.requests_per_s, 1),
              "p50_ms": round(summary.p50_ms, 2), "p99_ms": round(summary.p99_ms, 2)}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
