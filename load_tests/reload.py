"""Model replacement under load: does a new version go live without a failed request?

    python -m load_tests.reload                       # 60 s runs, a new version every 10 s
    python -m load_tests.reload --duration 10 --interval 2 --memory-reloads 5   # quicker

Copies the shipped models into a temporary folder, serves it in the explicit control mode,
and runs closed-loop single-image load (wrk, concurrency 16) twice for the same time:
once with no change, once while a new fashion-cnn version folder appears and is loaded
every `interval` seconds (the new version loads and warms up beside the serving one,
traffic switches, the old one drains and unloads). Then, without load, it loads
`memory-reloads` more versions one after another and reports the server's resident memory
`memory-settle` seconds after each (the server hands an unloaded version's pages back a
second after it is gone: app/repository/loader.py), to show that unloaded versions are
freed. Prints a table; the server binds 127.0.0.1 and every run stops by itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from load_tests import samples, wrk
from load_tests.client import Payload
from load_tests.server import ROOT, ServerProcess
from load_tests.stats import Summary

TOKEN = "reload-benchmark"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "fashion-cnn"


def new_version(root: Path, source: Path, version: int) -> None:
    """`source` copied as version `version` of the model (its manifest says so)."""
    target = root / MODEL / str(version)
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))


class Reloader(threading.Thread):
    """Every `interval` seconds: a new version folder, then a load call that switches to it."""

    def __init__(self, url: str, root: Path, source: Path, first_version: int, interval: float,
                 until: float) -> None:
        super().__init__(daemon=True)
        self.url, self.root, self.source = url, root, source
        self.version, self.interval, self.until = first_version, interval, until
        self.reloads: list[tuple[int, float, int]] = []  # (version, seconds the load call took, status)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=ADMIN, timeout=60) as client:
            next_at = time.monotonic() + self.interval
            while next_at < self.until:
                time.sleep(max(0.0, next_at - time.monotonic()))
                self.version += 1
                new_version(self.root, self.source, self.version)
                started = time.monotonic()
                response = client.post(f"/v2/repository/models/{MODEL}/load")
                self.reloads.append((self.version, time.monotonic() - started, response.status_code))
                next_at += self.interval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.reload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each load run")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between new versions")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--memory-reloads", type=int, default=20)
    parser.add_argument("--memory-settle", type=float, default=2.0,
                        help="seconds between a load and reading the memory (default 2)")
    args = parser.parse_args(argv)
    if not wrk.available():
        parser.error("wrk is not installed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="reload-"))
    root = work / "models"
    for name in (MODEL, "sst2-lstm"):
        folder, _ = samples.latest(args.model_dir, name)
        shutil.copytree(folder, root / name / folder.name)
    source = next((root / MODEL).iterdir())
    version = int(source.name)
    payload = Payload(f"/v1/models/{MODEL}:predict", samples.v1_images(args.model_dir, 1),
                      {"Content-Type": "application/json"})
    server_args = ["--model-dir", str(root), "--model-control-mode", "explicit", "--load-model", "*",
                   "--admin-token", TOKEN]
    try:
        with ServerProcess(server_args) as server:
            assert server.process is not None
            steady, _ = wrk.closed_loop(server.url, payload, args.concurrency, args.duration)
            reloader = Reloader(server.url, root, source, version, args.interval,
                                time.monotonic() + args.duration)
            reloader.start()
            churned, _ = wrk.closed_loop(server.url, payload, args.concurrency, args.duration, warmup_s=0)
            reloader.join()
            version = reloader.version
            memory = [server.resident_mb()]
            with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as client:
                for _ in range(args.memory_reloads):
                    version += 1
                    new_version(root, source, version)
                    assert client.post(f"/v2/repository/models/{MODEL}/load").status_code == 200
                    time.sleep(args.memory_settle)
                    memory.append(server.resident_mb())
                served = client.post(f"/v1/models/{MODEL}:predict", content=payload.body).json()["model_version"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(args, steady, churned, reloader.reloads, memory, served))
    return 0


def report(args: argparse.Namespace, steady: Summary, churned: Summary, reloads: list[tuple[int, float, int]],
           memory: list[float], served: str) -> str:
    def row(label: str, s: Summary) -> str:
        failed = s.requests - s.ok
        return (f"| {label} | {s.requests:,} | {failed} | {s.requests_per_s:,.0f} | {s.p50_ms:.2f} | "
                f"{s.p99_ms:.2f} | {s.max_ms:.1f} |")

    lines = [f"single-image V1 requests, closed loop c{args.concurrency}, {args.duration:g} s each", "",
             "| run | requests | non-2xx or failed | req/s | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|",
             row("no reloads", steady), row(f"a new version every {args.interval:g} s", churned), "",
             f"p99 with reloads / without: {churned.p99_ms / steady.p99_ms:.2f}",
             "load calls (version, seconds, status): " + ", ".join(f"v{v} {s:.2f}s {c}" for v, s, c in reloads),
             "",
             f"resident memory over {len(memory) - 1} more reloads (MB): "
             + ", ".join(f"{m:.0f}" for m in memory),
             f"growth from the first to the last: {memory[-1] - memory[0]:+.1f} MB; serving version {served}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
