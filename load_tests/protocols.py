"""HTTP binary tensors against gRPC (unary calls, and a stream: perf_analyzer's
`--streaming`, ModelStreamInfer), on one server, with Triton's perf_analyzer driving all three
(its C++ client: the load generator costs alike for each).

fashion-cnn, one real test image per request and 32 per request (`-b 32`), at c1, c16 and
c64; each cell measured in alternating rounds (HTTP, gRPC, gRPC stream), the ratios to HTTP
per round and their medians reported, so that a noisy machine moves all alike.

`--ceiling` adds grpc.aio's own ceiling to the rounds (load_tests/grpc_ceiling.py: the same
stack answering each call with no inference at all), unary and stream, each over the
service's HTTP: what no gRPC service on grpc.aio could pass on this machine.

`--shared-memory` adds HTTP and unary gRPC with the tensors in system shared memory
(perf_analyzer's `--shared-memory system`; the server started with `--shared-memory`), each
over the service's HTTP binary.

    python -m load_tests.protocols [--rounds 3] [--interval-ms 3000] [--images 32] [--concurrency 64] [--ceiling]
                                   [--shared-memory] [--workers auto]
    python -m load_tests.bench --protocols   (the same, after the benchmark's own scenarios)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx
import tritonclient.grpc as triton

from load_tests import perf_analyzer, perf_inputs
from load_tests.perf_analyzer import PROTOCOLS
from load_tests.server import ROOT, ServerProcess

CELLS = [(1, 1), (1, 16), (1, 64), (32, 1), (32, 16), (32, 64)]
"""(images per request, concurrency)."""
STATISTICS_SETTLE_S = 0.5
"""Waited after a run before the model's statistics are read: with several workers, each
writes its figures for the others every 0.2 s (app/observability/worker_stats.py)."""
MODEL = "fashion-cnn"


CEILINGS = ("grpc-ceiling", "grpc-stream-ceiling")
"""grpc.aio's ceiling over unary calls and over a stream (load_tests/grpc_ceiling.py)."""
SHARED_MEMORY = ("http-shm", "grpc-shm")
"""HTTP and unary gRPC with every tensor in system shared memory (perf_analyzer's own regions)."""


def grpc_ceiling(service: ServerProcess) -> ServerProcess:
    """The gRPC ceiling, copying the model's facts from the running service; its gRPC on its `port`."""
    ceiling = ServerProcess([], command=[sys.executable, "-m", "load_tests.grpc_ceiling", "--like", service.grpc_target],
                            ready=_grpc_serves)
    ceiling.grpc_target = f"127.0.0.1:{ceiling.port}"  # gRPC only: perf_analyzer.target reads this
    return ceiling


def _grpc_serves(server: ServerProcess) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
        except grpc.FutureTimeoutError:
            return False
    return True


CONNECT_FAILED = "failed to connect to all addresses"
"""What perf_analyzer's gRPC threads said in the first run of this tool in two sessions (some of
64 threads, "... No such file or directory"), clean when run again at once; cause not found
(docs/benchmarks.md, "The open targets again (2026-12-07, stop 63)")."""
UNSTABLE = "Failed to obtain stable measurement"
"""What perf_analyzer says where its windows' throughputs stayed more than --stability-percentage
apart for --max-trials windows: a busy moment of a shared machine (stop 64's first run of the
stream at c64), no figures at all."""
HUNG = "did not finish within"
"""A perf_analyzer run past its time (perf_analyzer.run's timeout): one `--streaming` run against
load_tests/grpc_ceiling.py in stop 64 (twelve more in a row, against it and the service, did
not; not reproduced)."""
TRANSIENT = {CONNECT_FAILED: "could not connect", UNSTABLE: "could not make its measurement stable",
             HUNG: "did not finish"}


def measure(tool: str, server: ServerProcess, protocol: str, data: str, images: int, concurrency: int,
            interval_ms: int, *options: str) -> dict[str, float]:
    """perf_analyzer's figures, and the CPU the server and the client (perf_analyzer) spent per
    request over the whole run (its warm-up windows too, as the requests counted). A run that
    failed for the moment (its client could not connect, its windows would not agree, or it
    did not end in time) is said on stderr and measured once more, not the whole table lost."""
    try:
        return _measured(tool, server, protocol, data, images, concurrency, interval_ms, *options)
    except RuntimeError as e:
        failure = next((marker for marker in TRANSIENT if marker in str(e)), None)
        if failure is None:
            raise
        said = next((line.strip() for line in str(e).splitlines() if failure in line), "")
        print(f"perf_analyzer -i {protocol} {TRANSIENT[failure]} ({said}); measuring once more", file=sys.stderr)
        return _measured(tool, server, protocol, data, images, concurrency, interval_ms, *options)


def _measured(tool: str, server: ServerProcess, protocol: str, data: str, images: int, concurrency: int,
              interval_ms: int, *options: str) -> dict[str, float]:
    answered, server_cpu, threads = images_answered(server), server.cpu_seconds(), server.cpu_by_thread()
    client_cpu = _children_cpu_seconds()
    try:
        done = perf_analyzer.run(tool, MODEL, server, protocol, concurrency, "-b", str(images), "--input-data", data,
                                 "--measurement-interval", str(interval_ms), "--stability-percentage", "30",
                                 "--max-trials", "6", *options)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"perf_analyzer -i {protocol} failed:\nperf_analyzer {HUNG} {e.timeout:g} s") from e
    client_cpu = _children_cpu_seconds() - client_cpu
    server_cpu = server.cpu_seconds() - server_cpu
    threads = {name: seconds - threads.get(name, 0.0) for name, seconds in server.cpu_by_thread().items()}
    time.sleep(STATISTICS_SETTLE_S)
    requests = (images_answered(server) - answered) / images
    found = perf_analyzer.figures(done.stdout)
    if "infer_per_s" not in found or requests <= 0:
        raise RuntimeError(f"perf_analyzer -i {protocol} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    found["server_us_per_request"] = server_cpu / requests * 1e6
    found["client_us_per_request"] = client_cpu / requests * 1e6
    for name, seconds in threads.items():
        found[f"{THREAD_KEY}{name}"] = seconds / requests * 1e6
    return found


THREAD_KEY = "server_us_per_request_in_"
"""The server's CPU per request in one group of its threads (ServerProcess.cpu_by_thread)."""


def images_answered(server: ServerProcess) -> int:
    """Rows the model answered so far (its statistics' inference_count): the service's and the
    ceiling's alike, over gRPC."""
    client = triton.InferenceServerClient(server.grpc_target)
    try:
        return sum(stats.inference_count for stats in client.get_inference_statistics(MODEL).model_stats)
    finally:
        client.close()


def _children_cpu_seconds() -> float:
    """CPU of this process's finished children: perf_analyzer's, once a run has returned."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run(model_dir: Path, rounds: int, interval_ms: int, server_args: list[str] | None = None,
        cells: list[tuple[int, int]] = CELLS, ceiling: bool = False, workers: str = "1",
        shared_memory: bool = False) -> list[dict[str, Any]]:
    tool = perf_analyzer.find()
    if tool is None:
        raise SystemExit("perf_analyzer is not here: ../shared/tools/perf_analyzer (as root) or ORTSERVE_PERF_ANALYZER")
    if shared_memory:
        perf_analyzer.install_cuda_runtime(tool)
        server_args = [*(server_args or []), "--shared-memory", "--shared-memory-dir",
                       str(perf_analyzer.shared_memory_folder(tool))]
    folder, seen_as = perf_analyzer.input_folder(tool)
    folder.mkdir(parents=True, exist_ok=True)
    data = f"{seen_as}/{perf_inputs.write(model_dir, folder, 32)[MODEL].name}"
    rows = []
    # One worker by default: one process compares the transports alone. With several, each
    # client's connections land where the kernel puts them (perf_analyzer's gRPC calls share
    # few connections, HTTP's are one per concurrent request), and the model's statistics,
    # which count the images answered, are every worker's summed.
    with ExitStack() as stack:
        server = stack.enter_context(ServerProcess(["--model-dir", str(model_dir), "--workers", workers,
                                                    *(server_args or [])]))
        # (name, server, perf_analyzer's protocol, its options) for every transport measured each round
        transports: list[tuple[str, ServerProcess, str, tuple[str, ...]]] = [(p, server, p, ()) for p in PROTOCOLS]
        if ceiling:
            bare = stack.enter_context(grpc_ceiling(server))
            # the version named: without it perf_analyzer stops with "failed to find the requested
            # model version" against the ceiling (not against the service; why, not found)
            version = ("-x", httpx.get(f"{server.url}/v2/models/{MODEL}").json()["versions"][-1])
            transports += [(name, bare, protocol, version) for name, protocol in zip(CEILINGS, PROTOCOLS[1:], strict=True)]
        if shared_memory:
            transports += [(name, server, name.removesuffix("-shm"), ("--shared-memory", "system"))
                           for name in SHARED_MEMORY]
        for images, concurrency in cells:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in transports}
            for number in range(rounds):
                # each round the other way round: neither transport always goes first
                for name, target, protocol, options in transports if number % 2 == 0 else transports[::-1]:
                    runs[name].append(measure(tool, target, protocol, data, images, concurrency, interval_ms,
                                              *options))
            row: dict[str, Any] = {"images": images, "concurrency": concurrency, "rounds": rounds}
            for name in list(runs)[1:]:
                ratios = [g["infer_per_s"] / h["infer_per_s"] for h, g in zip(runs["http"], runs[name], strict=True)]
                row[f"{name}_over_http"] = ratios
                row[f"{name}_median_ratio"] = statistics.median(ratios)
            for name, measured in runs.items():
                keys = {key for m in measured for key in m}  # a thread group may show in some rounds only
                row[name] = {key: statistics.median(m.get(key, 0.0) for m in measured) for key in keys}
            rows.append(row)
            print(line(row), flush=True)
            if ceiling:
                print(beside_http(row, CEILINGS), flush=True)
            if shared_memory:
                print(beside_http(row, SHARED_MEMORY), flush=True)
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


CEILING_HEADER = ("| images/request | conc | HTTP binary images/s (service) | gRPC ceiling | ceiling / HTTP per round | "
                  "median | stream ceiling | stream ceiling / HTTP per round | median |\n|---|---|---|---|---|---|---|---|---|")


def beside_http(row: dict[str, Any], names: tuple[str, ...]) -> str:
    """A table row of these transports' rates, each beside HTTP binary's: the ratio per round and its median."""
    cells = [f"| {row['images']} | {row['concurrency']} | {row['http']['infer_per_s']:,.0f} "]
    for name in names:
        rounds = ", ".join(f"{r:.2f}" for r in row[f"{name}_over_http"])
        cells.append(f"| {row[name]['infer_per_s']:,.0f} | {rounds} | **{row[f'{name}_median_ratio']:.2f}** ")
    return "".join(cells) + "|"


SHARED_MEMORY_HEADER = ("| images/request | conc | HTTP binary images/s | HTTP, shared memory | / HTTP binary per round | "
                        "median | gRPC, shared memory | / HTTP binary per round | median |\n|---|---|---|---|---|---|---|---|---|")



CPU_TITLE = "CPU per request, µs, server / client (perf_analyzer), medians of the rounds:"


def cpu_table(rows: list[dict[str, Any]]) -> str:
    """CPU per request (one call, or one message on a stream), server / client (perf_analyzer), µs."""
    names = [name for name in (*PROTOCOLS, *CEILINGS, *SHARED_MEMORY) if rows and name in rows[0]]
    header = ("| images/request | conc | " + " | ".join(f"{n} server / client" for n in names) + " |\n|---|---|"
              + "---|" * len(names))
    lines = [f"| {r['images']} | {r['concurrency']} | " + " | ".join(
        f"{r[n]['server_us_per_request']:,.0f} / {r[n]['client_us_per_request']:,.0f}" for n in names) + " |"
        for r in rows]
    return "\n".join([header, *lines])


THREADS_TITLE = ("The server's CPU per request by thread, µs, medians of the rounds (loop: the event loop; "
                 "infer: the model's inference threads; event_engine: gRPC core's; python: threads not named, "
                 "ONNX Runtime's pools and grpc.aio's poller among them):")


def threads_table(rows: list[dict[str, Any]]) -> str:
    """Where each transport's server CPU goes: the µs per request of each group of threads."""
    names = [name for name in (*PROTOCOLS, *CEILINGS, *SHARED_MEMORY) if rows and name in rows[0]]
    # the groups that used a µs per request somewhere (gRPC core's timer thread and the like do not)
    groups = sorted({key.removeprefix(THREAD_KEY) for r in rows for n in names for key, us in r[n].items()
                     if key.startswith(THREAD_KEY) and us >= 0.5})
    header = ("| images/request | conc | transport | " + " | ".join(groups) + " |\n|---|---|---|"
              + "---|" * len(groups))
    lines = [f"| {r['images']} | {r['concurrency']} | {n} | " + " | ".join(
        f"{r[n].get(THREAD_KEY + g, 0.0):,.0f}" for g in groups) + " |" for r in rows for n in names]
    return "\n".join([header, *lines])


def markdown(rows: list[dict[str, Any]]) -> str:
    tables = [HEADER, *(line(r) for r in rows)]
    if rows and CEILINGS[0] in rows[0]:
        tables += ["", CEILING_HEADER, *(beside_http(r, CEILINGS) for r in rows)]
    if rows and SHARED_MEMORY[0] in rows[0]:
        tables += ["", SHARED_MEMORY_HEADER, *(beside_http(r, SHARED_MEMORY) for r in rows)]
    tables += ["", CPU_TITLE, "", cpu_table(rows), "", THREADS_TITLE, "", threads_table(rows)]
    return "\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.protocols", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer's measurement window")
    parser.add_argument("--ceiling", action="store_true",
                        help="measure grpc.aio's own ceiling (load_tests/grpc_ceiling.py) in the same rounds")
    parser.add_argument("--shared-memory", action="store_true",
                        help="measure HTTP and gRPC with the tensors in system shared memory in the same rounds")
    parser.add_argument("--workers", default="1", help="the server's worker processes (auto: the default of "
                        "python -m app, one per usable CPU)")
    parser.add_argument("--images", type=int, choices=sorted({i for i, _ in CELLS}),
                        help="only the cells of this many images per request")
    parser.add_argument("--concurrency", type=int, choices=sorted({c for _, c in CELLS}),
                        help="only the cells at this concurrency")
    args = parser.parse_args(argv)
    print(HEADER, flush=True)
    cells = [cell for cell in CELLS if args.images in (None, cell[0]) and args.concurrency in (None, cell[1])]
    rows = run(args.model_dir, args.rounds, args.interval_ms, cells=cells, ceiling=args.ceiling,
               workers=args.workers, shared_memory=args.shared_memory)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protocols.json").write_text(json.dumps(rows, indent=2))
    (args.out / "protocols.md").write_text(markdown(rows) + "\n")
    print(f"\n{CPU_TITLE}\n\n{cpu_table(rows)}\n\n{THREADS_TITLE}\n\n{threads_table(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
