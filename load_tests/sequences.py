"""What the server's keeping of sequences costs (Triton's sequence batching with implicit
state): S sequences at once, each sending its steps one at a time (a start, steps, an end,
again), against a model served without sequences that the client sends its controls and its
state itself, taking the state from each answer (what a client of a server without sequence
batching does). The same graph both ways: `accumulator`, each step's x added to its
sequence's total. Alternating rounds, one server.

    python -m load_tests.sequences --sequences 64 --rounds 3 --duration 4

How clients use their connections (`--connections`): `pool`, the default, one aiohttp pool
for every sequence (a step mostly reuses the connection its sequence's last step freed);
`per-sequence`, a connection of its own for each sequence (every step reaches the worker that
holds its sequence); `spread`, as a proxy balancing over its connections to the server, each
step over the next connection of one set, round robin. With several workers a spread step
often reaches a worker that does not hold its sequence, and that worker has the one that does
run it (app/sequence_peers.py). `--compare-connections --workers 2` measures what that costs:
sequence batching per-sequence against spread, with the share of steps run by another worker,
from the server's metrics.

Binds 127.0.0.1; every run stops by itself. Makes its model with onnx (the dev install's).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import orjson

from load_tests.server import ServerProcess, alternating, serving_repository
from load_tests.stats import Sample, Summary, sample_total, summarize

if TYPE_CHECKING:
    import onnx

SERVED = "accumulator"
"""With sequence batching: clients send x and their sequence's parameters."""
BY_HAND = "accumulator-by-hand"
"""The same graph without it: clients send every input, their state among them."""
WAYS = (SERVED, BY_HAND)
STEPS = 8  # per sequence, its start and end among them

ACCUMULATOR_CONFIG = """
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 16 max_queue_delay_microseconds: 2000 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "acc_in" output_name: "acc_out" data_type: TYPE_FP32 dims: [ 1 ] } ]
}
"""
"""accumulator()'s Triton configuration: its inputs and outputs left to the graph (x in; the
total and the echoed controls out; the state's output is not answered)."""


def accumulator() -> onnx.GraphProto:
    """A stateful model as Triton's sequence batcher serves it: each request's x added to its
    sequence's running total, kept in an implicit state (acc_in -> acc_out) that START resets;
    its controls (START, END, READY and the correlation ID) echoed, so that a test sees them."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    f32, i32, u64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.UINT64
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    return helper.make_graph(
        [helper.make_node("Cast", ["START"], ["start_f"], to=f32),
         helper.make_node("Sub", ["one", "start_f"], ["keep"]),
         helper.make_node("Mul", ["acc_in", "keep"], ["before"]),
         helper.make_node("Add", ["before", "x"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["total"]),
         helper.make_node("Identity", ["START"], ["started"]),
         helper.make_node("Identity", ["END"], ["ended"]),
         helper.make_node("Identity", ["READY"], ["ready"]),
         helper.make_node("Identity", ["CORRID"], ["corrid"])],
        "accumulator",
        [helper.make_tensor_value_info(name, kind, ["n", 1])
         for name, kind in (("x", f32), ("START", i32), ("END", i32), ("READY", i32), ("CORRID", u64), ("acc_in", f32))],
        [helper.make_tensor_value_info(name, kind, ["n", 1])
         for name, kind in (("total", f32), ("started", i32), ("ended", i32), ("ready", i32), ("corrid", u64),
                            ("acc_out", f32))], [one])


def repository(home: Path, max_batch_size: int = 32) -> None:
    """The accumulator twice: with sequence batching, and without it (dynamic batching)."""
    import onnx
    from onnx import helper

    model = helper.make_model(accumulator(), opset_imports=[helper.make_opsetid("", 17)])
    for name, config in ((SERVED, ACCUMULATOR_CONFIG.replace("max_batch_size: 8", f"max_batch_size: {max_batch_size}")
                          .replace("max_candidate_sequences: 16", "max_candidate_sequences: 4096")),
                         (BY_HAND, f"max_batch_size: {max_batch_size}\ndynamic_batching {{ max_queue_delay_microseconds: "
                                   "2000 }\n")):
        (home / name / "1").mkdir(parents=True)
        onnx.save(model, str(home / name / "1" / "model.onnx"))
        (home / name / "config.pbtxt").write_text(config)


def _served(x: float, sequence_id: int, start: bool, end: bool) -> bytes:
    return orjson.dumps({"parameters": {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end},
                         "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [x]}]})


def _by_hand(x: float, sequence_id: int, start: bool, end: bool, state: float) -> bytes:
    values = {"x": ("FP32", x), "START": ("INT32", int(start)), "END": ("INT32", int(end)), "READY": ("INT32", 1),
              "CORRID": ("UINT64", sequence_id), "acc_in": ("FP32", state)}
    return orjson.dumps({"inputs": [{"name": name, "shape": [1, 1], "datatype": datatype, "data": [value]}
                                    for name, (datatype, value) in values.items()]})


POOL, PER_SEQUENCE, SPREAD = "pool", "per-sequence", "spread"


async def run(url: str, way: str, sequences: int, duration_s: float, warmup_s: float = 1.0,
              connections: str = POOL) -> tuple[list[Sample], int]:
    """(every step's sample after the warm-up, steps whose total was wrong) over `duration_s`.
    `connections`: POOL, PER_SEQUENCE or SPREAD (the module's doc)."""
    samples: list[Sample] = []
    wrong = 0
    path = f"{url}/v2/models/{way}/infer"
    timeout = aiohttp.ClientTimeout(total=30)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=sequences if connections == POOL else 1),
                                      timeout=timeout) for _ in range(1 if connections == POOL else sequences)]
    turn = itertools.count()
    try:
        measure_from = time.perf_counter() + warmup_s
        stop_at = measure_from + duration_s

        def session_for(n: int) -> aiohttp.ClientSession:
            if connections == SPREAD:
                return sessions[next(turn) % sequences]
            return sessions[0 if connections == POOL else n]

        async def client(n: int) -> None:
            nonlocal wrong
            sequence_id = 1 + n * 1_000_000
            while time.perf_counter() < stop_at:
                state, expected = 0.0, 0.0
                sequence_id += 1
                for i in range(STEPS):
                    x = float(i + 1)
                    start, end = i == 0, i == STEPS - 1
                    body = (_served(x, sequence_id, start, end) if way == SERVED
                            else _by_hand(x, sequence_id, start, end, state))
                    began = time.perf_counter()
                    async with session_for(n).post(path, data=body, headers={"Content-Type": "application/json"}) as answer:
                        got = orjson.loads(await answer.read())
                        status = answer.status
                    if began >= measure_from:
                        samples.append(Sample(time.perf_counter() - began, status))
                    if status != 200:
                        break
                    found = {o["name"]: o["data"][0] for o in got["outputs"]}
                    expected += x
                    state = found.get("acc_out", 0.0)
                    wrong += found["total"] != expected

        await asyncio.gather(*(client(n) for n in range(sequences)))
    finally:
        for session in sessions:
            await session.close()
    return samples, wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.sequences", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=64, help="sequences at once, each one step at a time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--workers", default="1")
    parser.add_argument("--connections", choices=[POOL, PER_SEQUENCE, SPREAD], default=POOL)
    parser.add_argument("--compare-connections", action="store_true",
                        help="sequence batching over a connection per sequence against spread steps")
    args = parser.parse_args(argv)
    cases = ([(SERVED, PER_SEQUENCE), (SERVED, SPREAD)] if args.compare_connections
             else [(way, args.connections) for way in WAYS])
    got: dict[tuple[str, str], list[tuple[Summary, float, float]]] = {case: [] for case in cases}
    with serving_repository(repository, args.workers, "sequences-bench-") as server:
        for i, case in alternating(cases, args.rounds):
            way, connections = case
            before, elsewhere = _batches(server.url, way), _elsewhere(server, way)
            samples, wrong = asyncio.run(run(server.url, way, args.sequences, args.duration, connections=connections))
            if args.workers != "1":
                time.sleep(1.5)  # every worker's metrics in the answering one's (app/observability/workers.py)
            after = _batches(server.url, way)
            summary = summarize(samples, args.duration)
            if summary.errors or wrong:
                raise SystemExit(f"{way}: errors {summary.errors}, {wrong} wrong totals")
            rows = (after[0] - before[0]) / max(1, after[1] - before[1])
            moved = (_elsewhere(server, way) - elsewhere) / max(1, after[0] - before[0])
            got[case].append((summary, rows, moved))
            print(f"round {i + 1} {way}, {connections}: {summary.requests_per_s:,.0f} steps/s, p50 "
                  f"{summary.p50_ms:.2f} ms, p99 {summary.p99_ms:.2f} ms, {rows:.1f} rows per batch, "
                  f"{moved:.0%} of steps run by another worker", flush=True)
    print(f"\n| {args.sequences} sequences, one step at a time each, {args.workers} worker(s) | connections | "
          "steps/s per round | median | p50 / p99 ms (median) | rows per batch | steps run by another worker |")
    print("|---|---|---|---|---|---|---|")
    for (way, connections), runs in got.items():
        rates = [s.requests_per_s for s, _, _ in runs]
        label = "sequence batching (server keeps the state)" if way == SERVED else "no sequences (client sends it)"
        print(f"| {label} | {connections} | {', '.join(f'{r:,.0f}' for r in rates)} | {statistics.median(rates):,.0f} | "
              f"{statistics.median(s.p50_ms for s, _, _ in runs):.2f} / "
              f"{statistics.median(s.p99_ms for s, _, _ in runs):.2f} | {statistics.median(r for _, r, _ in runs):.1f} | "
              f"{statistics.median(m for _, _, m in runs):.0%} |")
    return 0


def _elsewhere(server: ServerProcess, model: str) -> float:
    """Steps of the model's sequences run by another worker so far (every worker's)."""
    return sample_total(server.metrics(), "ortserve_sequence_steps_elsewhere_total", model=model)


def _batches(url: str, model: str) -> tuple[int, int]:
    """(rows run, batches run) so far, from the model's Triton statistics."""
    stats: dict[str, Any] = httpx.get(f"{url}/v2/models/{model}/stats", timeout=30).json()["model_stats"][0]
    return stats["inference_count"], stats["execution_count"]


if __name__ == "__main__":
    raise SystemExit(main())
