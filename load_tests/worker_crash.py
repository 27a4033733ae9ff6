"""A worker killed under load: what fails with a socket per worker and with one shared.

Each round starts the service with two workers (fashion-cnn, V2 JSON single images), runs
wrk at c64 for --duration seconds, and SIGKILLs one worker a third of the way in; uvicorn
starts another. By default every request comes on a new connection (`Connection: close`),
so connections keep waiting in the listening sockets' queues, as with clients that do not
keep connections alive; --keep-alive reuses them. Rounds alternate `--reuse-port` (a socket
per worker, app/listeners.py) and `--no-reuse-port` (one shared socket). A killed worker
loses what it was answering either way; what differs is the connections waiting in its
socket's queue, which the kernel resets unless net.ipv4.tcp_migrate_req is 1 (printed).

    python -m load_tests.worker_crash [--rounds 3] [--duration 6] [--keep-alive]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from app.listeners import queue_moves_on_exit
from load_tests import samples, wrk
from load_tests.client import Payload
from load_tests.server import ROOT, ServerProcess

CONCURRENCY = 64
SETUPS = {"socket per worker": ["--reuse-port"], "one shared socket": ["--no-reuse-port"]}


def kernel_setting() -> str:
    """net.ipv4.tcp_migrate_req as the service reads it (app/listeners.py)."""
    return {True: "1", False: "0", None: "absent"}[queue_moves_on_exit()]


def one_round(args: list[str], payload: Payload, duration_s: float, script: Path) -> dict[str, int]:
    with ServerProcess(["--workers", "2", "--no-grpc", *args]) as server:
        deadline = time.monotonic() + 60
        while len(workers := sorted(server.worker_pids())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        load = wrk.start(script, server.url + payload.path, CONCURRENCY, duration_s)
        time.sleep(duration_s / 3)
        os.kill(workers[0], signal.SIGKILL)
        return wrk.result_of(load, duration_s + 60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load per round")
    parser.add_argument("--keep-alive", action="store_true", help="keep connections alive (default: one per request)")
    args = parser.parse_args(argv)
    if not wrk.available():
        sys.exit("wrk is not installed (apt-get install wrk)")
    headers = {"Content-Type": "application/json", **({} if args.keep_alive else {"Connection": "close"})}
    payload = Payload("/v2/models/fashion-cnn/infer", samples.v2_json(1, ROOT / "models"), headers)
    failed: dict[str, list[str]] = {name: [] for name in SETUPS}
    answered: dict[str, list[int]] = {name: [] for name in SETUPS}
    with tempfile.TemporaryDirectory(prefix="worker-crash-") as folder:
        script = wrk.write_script(payload, Path(folder))
        for _ in range(args.rounds):
            for name, setup in SETUPS.items():
                result = one_round(setup, payload, args.duration, script)
                kinds = {k: result[k] for k in ("connect", "read", "write", "timeout", "non_2xx") if result[k]}
                failed[name].append(f"{sum(kinds.values())} ({', '.join(f'{k} {v}' for k, v in kinds.items()) or '-'})")
                answered[name].append(result["requests"])
    connections = "kept alive" if args.keep_alive else "one per request"
    print(f"A worker of two SIGKILLed a third into {args.duration:g} s of wrk c{CONCURRENCY} (V2 JSON, "
          f"connections {connections}); net.ipv4.tcp_migrate_req = {kernel_setting()}\n")
    print("| listening | requests per round (median) | failed per round (by kind) |")
    print("|---|---|---|")
    for name in SETUPS:
        print(f"| {name} | {statistics.median(answered[name]):,.0f} | {'; '.join(failed[name])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
