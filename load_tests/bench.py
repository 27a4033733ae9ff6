"""Benchmark runner: starts servers itself, loads them, and compares settings in one run.

    python -m load_tests.bench                       # the full comparison (about 4 minutes)
    python -m load_tests.bench --quick               # a few seconds per scenario
    python -m load_tests.bench --only ceiling-v1 v1-fashion-cnn   # some scenarios

Scenario names say protocol and model: v1-fashion-cnn is fashion-cnn through the V1 task
endpoint, v2-binary-fashion-cnn-32 is 32 images per V2 request in Triton's binary tensors;
ceiling-* and naive-* are the comparison apps (load_tests/ceiling.py, load_tests/naive.py).

    python -m load_tests.bench --readme              # and write README.md's results table

Closed-loop runs use wrk when it is installed (`apt-get install wrk`; load_tests/wrk.py
says why), else the asyncio client; --client picks one. Open-loop runs use the asyncio
client. Writes <out>/results.json, <out>/results.md and PNG plots; prints the table.
Every server binds 127.0.0.1 and every run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from load_tests import protocols, samples, wrk
from load_tests.client import JSON, Payload, closed_loop, open_loop
from load_tests.raw_ort import raw_throughput
from load_tests.server import ROOT, ServerProcess
from load_tests.stats import Summary, cpu_seconds, histogram_totals, summarize

CEILING = "load_tests.ceiling:app"
NAIVE = "load_tests.naive:app"


@dataclass
class Scenario:
    name: str
    server_args: list[str]
    payload: Callable[[Path], Payload]
    concurrency: list[int]
    model: str = ""
    asgi: str | None = None  # another server than the service (the ceiling, the naive one)
    rate_per_s: float | None = None  # open loop when set
    note: str = ""
    command: list[str] | None = None  # another server altogether (Triton: load_tests/triton_peer.py)
    ready_path: str = "/v2/health/ready"

    @property
    def peer(self) -> bool:
        """Not the service: no /metrics to read."""
        return self.asgi is not None or self.command is not None


@dataclass
class Row:
    scenario: str
    concurrency: int
    items_per_request: int
    summary: dict[str, Any]
    requests_per_s: float
    items_per_s: float
    server_cpu_s: float
    client_cpu_s: float
    mean_batch_size: float | None = None
    mean_queue_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def cnn_v1(model_dir: Path) -> Payload:
    return Payload("/v1/models/fashion-cnn:predict", samples.v1_images(model_dir, 1), JSON)


def lstm_v1(_: Path) -> Payload:
    return Payload("/v1/models/sst2-lstm:predict", samples.v1_texts(1), JSON)


def cnn_v1_32(model_dir: Path) -> Payload:
    return Payload("/v1/models/fashion-cnn:predict", samples.v1_images(model_dir, 32), JSON, items=32)


def v2_json_1(model_dir: Path) -> Payload:
    return Payload("/v2/models/fashion-cnn/infer", samples.v2_json(1, model_dir), JSON)


def v2_json_32(model_dir: Path) -> Payload:
    return Payload("/v2/models/fashion-cnn/infer", samples.v2_json(32, model_dir), JSON, items=32)


def v2_binary_32(model_dir: Path) -> Payload:
    body, headers = samples.v2_binary(32, model_dir)
    return Payload("/v2/models/fashion-cnn/infer", body, headers, items=32)


TRITON_PYTHON = Path(os.environ.get("TRITON_PYTHON", ROOT / ".venv-triton" / "bin" / "python"))
"""The interpreter of PyTriton's own venv (`make triton-peer`; load_tests/triton_peer.py)."""


def triton(payload: Callable[[Path], Payload], concurrency: list[int], name: str, note: str,
           python: Path, model_dir: Path) -> Scenario:
    command = [str(python), str(ROOT / "load_tests" / "triton_peer.py"), "--model-dir", str(model_dir)]
    return Scenario(name, [], payload, concurrency, command=command, ready_path="/v2/models/fashion-cnn/ready",
                    note=note)


def scenarios(triton_python: Path = TRITON_PYTHON, model_dir: Path = ROOT / "models") -> list[Scenario]:
    """The service's scenarios run one worker process unless named `-auto` (the default,
    workers auto: one per CPU) or `-2workers`, so that their figures compare with earlier runs."""
    one = ["--workers", "1"]
    off = [*one, "--max-batch-size", "1"]
    return [
        Scenario("ceiling-v1", [], cnn_v1, [1, 16, 64], asgi=CEILING, note="parse-only FastAPI endpoint"),
        Scenario("naive-v1-fashion-cnn", [], cnn_v1, [1, 16, 64], asgi=NAIVE,
                 note="FastAPI + one ORT call per request"),
        Scenario("v1-fashion-cnn", one, cnn_v1, [1, 16, 64], "fashion-cnn", note="1 image/request, batching on"),
        Scenario("v1-fashion-cnn-auto", [], cnn_v1, [1, 16, 64], "fashion-cnn", note="defaults: workers auto"),
        Scenario("v1-fashion-cnn-auto-awake-off", ["--keep-awake-ms", "0"], cnn_v1, [1, 16, 64], "fashion-cnn",
                 note="workers auto, no CPU kept awake between requests"),
        Scenario("ceiling-v1-32", [], cnn_v1_32, [16], asgi=CEILING, note="32 images/request, parse only"),
        Scenario("naive-v1-fashion-cnn-32", [], cnn_v1_32, [16], asgi=NAIVE, note="32 images/request"),
        Scenario("v1-fashion-cnn-32", one, cnn_v1_32, [16], "fashion-cnn", note="32 images/request"),
        Scenario("v1-fashion-cnn-nobatch", off, cnn_v1, [64], "fashion-cnn", note="batching off"),
        Scenario("v1-fashion-cnn-batch16", [*one, "--max-batch-size", "16"], cnn_v1, [64], "fashion-cnn",
                 note="batches of at most 16 rows (the manifest's until 2026-12-05)"),
        Scenario("v1-fashion-cnn-int8", [*one, "--variant", "int8"], cnn_v1, [64], "fashion-cnn"),
        Scenario("v1-fashion-cnn-2workers", ["--workers", "2"], cnn_v1, [64], "fashion-cnn"),
        Scenario("v1-sst2-lstm", one, lstm_v1, [1, 16, 64], "sst2-lstm", note="1 sentence/request"),
        Scenario("v1-sst2-lstm-nobatch", off, lstm_v1, [64], "sst2-lstm", note="batching off"),
        Scenario("ceiling-v2", [], v2_json_1, [1, 16, 64], asgi=CEILING, note="V2 JSON, parse-only FastAPI endpoint"),
        Scenario("ceiling-v2-2proc", ["--workers", "2"], v2_json_1, [64], asgi=CEILING,
                 note="V2 JSON, parse only, two uvicorn worker processes: what every core gives a server "
                      "that does nothing else"),
        triton(v2_json_1, [1, 16, 64], "triton-v2-json", "V2 JSON, Triton via PyTriton (load_tests/triton_peer.py)",
               triton_python, model_dir),
        Scenario("v2-json-fashion-cnn", one, v2_json_1, [1, 16, 64], "fashion-cnn", note="V2 JSON, 1 image/request"),
        Scenario("v2-json-fashion-cnn-access-log", [*one, "--access-log"], v2_json_1, [64], "fashion-cnn",
                 note="V2 JSON, one line per request in the access log"),
        Scenario("v2-json-fashion-cnn-traced", [*one, "--tracing"], v2_json_1, [64], "fashion-cnn",
                 note="V2 JSON, every request traced (sampling 1.0, kept in memory)"),
        Scenario("v2-json-fashion-cnn-traced-10pct", [*one, "--tracing", "--trace-sample", "0.1"], v2_json_1, [64],
                 "fashion-cnn", note="V2 JSON, one request in ten traced"),
        Scenario("v2-json-fashion-cnn-batch16", [*one, "--max-batch-size", "16"], v2_json_1, [64], "fashion-cnn",
                 note="V2 JSON, batches of at most 16 rows"),
        Scenario("v2-json-fashion-cnn-auto", [], v2_json_1, [1, 16, 64], "fashion-cnn",
                 note="V2 JSON, defaults: workers auto"),
        Scenario("v2-json-fashion-cnn-auto-batch16", ["--max-batch-size", "16"], v2_json_1, [64], "fashion-cnn",
                 note="V2 JSON, workers auto, batches of at most 16 rows"),
        Scenario("v2-json-fashion-cnn-auto-awake-off", ["--keep-awake-ms", "0"], v2_json_1, [1, 16, 64], "fashion-cnn",
                 note="V2 JSON, workers auto, no CPU kept awake between requests"),
        triton(v2_json_32, [16, 64], "triton-v2-json-32", "32 images/request, Triton", triton_python, model_dir),
        Scenario("v2-json-fashion-cnn-32", one, v2_json_32, [16, 64], "fashion-cnn", note="32 images/request"),
        Scenario("v2-json-fashion-cnn-32-auto", [], v2_json_32, [16, 64], "fashion-cnn",
                 note="32 images/request, defaults: workers auto"),
        Scenario("v2-json-fashion-cnn-32-auto-512", ["--max-large-batch-size", "512"], v2_json_32, [16, 64],
                 "fashion-cnn", note="32 images/request, workers auto, batches of up to 16 requests"),
        Scenario("v2-binary-fashion-cnn-32", one, v2_binary_32, [16], "fashion-cnn", note="32 images/request"),
        Scenario("v2-binary-fashion-cnn-32-int8", [*one, "--variant", "int8"], v2_binary_32, [16], "fashion-cnn"),
        Scenario("v1-fashion-cnn-open-800rps", one, cnn_v1, [0], "fashion-cnn", rate_per_s=800,
                 note="open loop, fixed arrival rate"),
    ]


@dataclass
class Pairing:
    """Two servers up at once, measured in alternating rounds: on a shared, noisy machine
    the same configuration varies by a third between runs, so a target ratio is judged on
    the median of ratios taken minutes apart rather than on two separate runs."""

    label: str
    numerator: Scenario
    denominator: Scenario
    concurrency: int


def pairings(chosen: list[Scenario]) -> list[Pairing]:
    by_name = {s.name: s for s in chosen}
    wanted = [("v1-fashion-cnn / ceiling", "v1-fashion-cnn", "ceiling-v1"),
              ("v1-fashion-cnn-auto / naive, c1", "v1-fashion-cnn-auto", "naive-v1-fashion-cnn", 1),
              ("v1-fashion-cnn-auto-awake-off / naive, c1", "v1-fashion-cnn-auto-awake-off", "naive-v1-fashion-cnn", 1),
              ("v1-fashion-cnn-auto keep-awake on / off, c1", "v1-fashion-cnn-auto", "v1-fashion-cnn-auto-awake-off", 1),
              ("v1-fashion-cnn-auto keep-awake on / off, c16", "v1-fashion-cnn-auto", "v1-fashion-cnn-auto-awake-off",
               16),
              ("v1-fashion-cnn-auto keep-awake on / off", "v1-fashion-cnn-auto", "v1-fashion-cnn-auto-awake-off"),
              ("v2-json-fashion-cnn-auto keep-awake on / off", "v2-json-fashion-cnn-auto",
               "v2-json-fashion-cnn-auto-awake-off"),
              ("v2-json-fashion-cnn / ceiling", "v2-json-fashion-cnn", "ceiling-v2"),
              ("v1-fashion-cnn manifest's batches / 16 rows", "v1-fashion-cnn", "v1-fashion-cnn-batch16"),
              ("v2-json-fashion-cnn manifest's batches / 16 rows", "v2-json-fashion-cnn", "v2-json-fashion-cnn-batch16"),
              ("v2-json-fashion-cnn-auto manifest's batches / 16 rows", "v2-json-fashion-cnn-auto",
               "v2-json-fashion-cnn-auto-batch16"),
              ("v2-json-fashion-cnn-auto / ceiling", "v2-json-fashion-cnn-auto", "ceiling-v2"),
              ("ceiling-v2 two processes / one", "ceiling-v2-2proc", "ceiling-v2"),
              ("v2-json-fashion-cnn access log on / off", "v2-json-fashion-cnn-access-log", "v2-json-fashion-cnn"),
              ("v2-json-fashion-cnn traced / not", "v2-json-fashion-cnn-traced", "v2-json-fashion-cnn"),
              ("v2-json-fashion-cnn traced 10% / not", "v2-json-fashion-cnn-traced-10pct", "v2-json-fashion-cnn"),
              ("v2-json-fashion-cnn-32-auto / triton", "v2-json-fashion-cnn-32-auto", "triton-v2-json-32"),
              ("v2-json-fashion-cnn-32 / triton", "v2-json-fashion-cnn-32", "triton-v2-json-32"),
              ("v2-json-fashion-cnn-32-auto 512-row / 128-row batches", "v2-json-fashion-cnn-32-auto-512",
               "v2-json-fashion-cnn-32-auto"),
              ("v1-sst2-lstm batching on / off", "v1-sst2-lstm", "v1-sst2-lstm-nobatch")]
    return [Pairing(label, by_name[a], by_name[b], *concurrency or (64,))
            for label, a, b, *concurrency in wanted if a in by_name and b in by_name]


def run_pairing(p: Pairing, model_dir: Path, duration_s: float, rounds: int, client: str) -> dict[str, Any]:
    num, den = p.numerator, p.denominator
    with _server(num, model_dir) as a, _server(den, model_dir) as b:
        payload = num.payload(model_dir)
        results = []
        for i in range(rounds):
            order = [(b, "denominator"), (a, "numerator")] if i % 2 == 0 else [(a, "numerator"), (b, "denominator")]
            measured = {side: _closed_loop(server.url, payload, p.concurrency, duration_s, client)[0]
                        for server, side in order}
            top, bottom = measured["numerator"], measured["denominator"]
            results.append({"numerator": asdict(top), "denominator": asdict(bottom),
                            "requests_ratio": top.requests_per_s / bottom.requests_per_s,
                            "p50_ratio": top.p50_ms / bottom.p50_ms, "p99_ratio": top.p99_ms / bottom.p99_ms})
            print(f"{p.label} round {i + 1}: {top.requests_per_s:,.0f} / {bottom.requests_per_s:,.0f} req/s "
                  f"= {results[-1]['requests_ratio']:.2f}; p50 {top.p50_ms:.2f} / {bottom.p50_ms:.2f} ms; "
                  f"p99 {top.p99_ms:.1f} / {bottom.p99_ms:.1f} ms", flush=True)
    return {"label": p.label, "concurrency": p.concurrency, "rounds": results,
            "median_requests_ratio": statistics.median(r["requests_ratio"] for r in results),
            "median_p50_ratio": statistics.median(r["p50_ratio"] for r in results),
            "median_p99_ratio": statistics.median(r["p99_ratio"] for r in results)}


def _closed_loop(url: str, payload: Payload, concurrency: int, duration_s: float,
                 client: str) -> tuple[Summary, float]:
    """(summary, the load generator's CPU seconds) of one closed-loop run."""
    if client == "wrk":
        return wrk.closed_loop(url, payload, concurrency, duration_s)
    before = cpu_seconds()
    samples_, seconds = asyncio.run(closed_loop(url, payload, concurrency, duration_s))
    return summarize(samples_, seconds, payload.items), cpu_seconds() - before


def run_scenario(s: Scenario, model_dir: Path, duration_s: float, client: str) -> list[Row]:
    rows = []
    with _server(s, model_dir) as server:
        payload = s.payload(model_dir)
        for concurrency in s.concurrency:
            before_metrics = "" if s.peer else server.metrics()
            cpu_server, cpu_self = server.cpu_seconds(), cpu_seconds()
            if s.rate_per_s:
                samples_, seconds = asyncio.run(open_loop(server.url, payload, s.rate_per_s, duration_s))
                summary, client_cpu = summarize(samples_, seconds, payload.items), cpu_seconds() - cpu_self
            else:
                summary, client_cpu = _closed_loop(server.url, payload, concurrency, duration_s, client)
            row = Row(s.name, concurrency, payload.items, asdict(summary), round(summary.requests_per_s, 1),
                      round(summary.items_per_s, 1), round(server.cpu_seconds() - cpu_server, 2),
                      round(client_cpu, 2))
            if not s.peer:
                after = server.metrics()
                batch = _delta_mean(before_metrics, after, "ortserve_batch_size", s.model)
                queue = _delta_mean(before_metrics, after, "ortserve_queue_time_seconds", s.model)
                row.mean_batch_size = None if batch is None else round(batch, 2)
                row.mean_queue_ms = None if queue is None else round(queue * 1000, 3)
            if s.rate_per_s:
                row.extra["offered_rate_per_s"] = s.rate_per_s
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _server(s: Scenario, model_dir: Path) -> ServerProcess:
    if s.command:
        return ServerProcess([], command=s.command, ready_path=s.ready_path, ready_timeout_s=180)
    if s.asgi:  # a comparison app: its server_args are uvicorn's, its model dir from the environment
        return ServerProcess(s.server_args, asgi=s.asgi, env={"NAIVE_MODEL_DIR": str(model_dir)})
    return ServerProcess(["--model-dir", str(model_dir), *s.server_args])


def _delta_mean(before: str, after: str, name: str, model: str) -> float | None:
    """Mean over this run only: (sum, count) differences between two /metrics scrapes."""
    s0, c0 = histogram_totals(before, name, model)
    s1, c1 = histogram_totals(after, name, model)
    return (s1 - s0) / (c1 - c0) if c1 > c0 else None


HEADER = ["scenario", "conc", "items/req", "req/s", "items/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
          "errors", "mean batch", "queue ms", "server CPU s", "client CPU s"]


def _cells(r: Row) -> list[str]:
    s = r.summary
    errors = ",".join(f"{k}:{v}" for k, v in s["errors"].items()) or "0"
    return [r.scenario, str(r.concurrency or f"{r.extra.get('offered_rate_per_s', 0):g}/s"),
            str(r.items_per_request), f"{r.requests_per_s:,.0f}", f"{r.items_per_s:,.0f}",
            f"{s['p50_ms']:.2f}", f"{s['p90_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['max_ms']:.1f}", errors,
            "-" if r.mean_batch_size is None else f"{r.mean_batch_size:.1f}",
            "-" if r.mean_queue_ms is None else f"{r.mean_queue_ms:.2f}", f"{r.server_cpu_s:.1f}",
            f"{r.client_cpu_s:.1f}"]


def _line(r: Row) -> str:
    return "  ".join(f"{h}={c}" for h, c in zip(HEADER, _cells(r), strict=True))


def markdown(rows: list[Row], raw: list[dict[str, Any]], ratios: list[tuple[str, str]],
             paired: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    lines += ["", "Raw in-process ONNX Runtime (no HTTP), fashion-cnn:", "",
              "| variant | threads | batch | images/s |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['items_per_s']:,.0f} |" for r in raw]
    lines += ["", "| comparison | ratio |", "|---|---|"] + [f"| {a} | {b} |" for a, b in ratios]
    if paired:
        lines += ["", "Paired runs (both servers up, alternating rounds), concurrency 64 unless named:", "",
                  "| comparison | req/s ratio per round | median | p50 ratio per round | median "
                  "| p99 ratio per round | median |",
                  "|---|---|---|---|---|---|---|"]
        for p in paired:
            per_round = ", ".join(f"{r['requests_ratio']:.2f}" for r in p["rounds"])
            p50s = ", ".join(f"{r['p50_ratio']:.2f}" for r in p["rounds"])
            p99s = ", ".join(f"{r['p99_ratio']:.2f}" for r in p["rounds"])
            lines.append(f"| {p['label']} | {per_round} | {p['median_requests_ratio']:.2f} | {p50s} | "
                         f"{p['median_p50_ratio']:.2f} | {p99s} | {p['median_p99_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


README_START = "<!-- bench results: written by `python -m load_tests.bench --readme`"
README_END = "<!-- end of bench results -->"


def readme_results(rows: list[Row], raw: list[dict[str, Any]], comparisons: list[tuple[str, str]],
                   paired: list[dict[str, Any]], provenance: str) -> str:
    """The README's one results table: every row, raw ONNX Runtime, the ratios and the
    paired runs, under the line that says when, at which commit and how it was measured."""
    lines = [provenance, "", "| scenario | clients | items/request | req/s | items/s | p50 ms | p99 ms | mean batch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        clients = str(r.concurrency) if r.concurrency else f"{r.extra.get('offered_rate_per_s', 0):g}/s offered"
        batch = "-" if r.mean_batch_size is None else f"{r.mean_batch_size:.1f}"
        lines.append(f"| {r.scenario} | {clients} | {r.items_per_request} | {r.requests_per_s:,.0f} | "
                     f"{r.items_per_s:,.0f} | {r.summary['p50_ms']:.2f} | {r.summary['p99_ms']:.2f} | {batch} |")
    lines += ["", "| raw ONNX Runtime, fashion-cnn (no HTTP) | threads | batch | images/s |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['items_per_s']:,.0f} |" for r in raw]
    lines += ["", "| comparison (this run) | ratio |", "|---|---|"] + [f"| {a} | {b} |" for a, b in comparisons]
    for p in paired:
        per_round = ", ".join(f"{r['requests_ratio']:.2f}" for r in p["rounds"])
        lines.append(f"| {p['label']}, paired rounds at c{p['concurrency']} (req/s: {per_round}) | "
                     f"{p['median_requests_ratio']:.2f} (p99 {p['median_p99_ratio']:.2f}) |")
    return "\n".join(lines)


def write_readme_results(readme: Path, block: str) -> None:
    """Replace what lies between the README's two markers with `block`."""
    text = readme.read_text()
    start = text.index(README_START)
    body_start = text.index("\n", start) + 1
    end = text.index(README_END, body_start)
    readme.write_text(text[:body_start] + block + "\n" + text[end:])


def provenance_line(argv: list[str], client: str, duration_s: float) -> str:
    """When, at which commit (with -dirty for uncommitted changes) and how a run was made."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    cpus = len(os.sched_getaffinity(0))
    command = " ".join(["python -m load_tests.bench", *argv])
    processor = platform.processor() or platform.machine()
    return (f"Measured {time.strftime('%Y-%m-%d')} at commit {commit} on {cpus} CPUs ({processor}), "
            f"`{command}`: {client} closed loop, {duration_s:g} s per run.")


def ratios(rows: list[Row], raw: list[dict[str, Any]], served_variant: str) -> list[tuple[str, str]]:
    def get(name: str, conc: int) -> Row | None:
        return next((r for r in rows if r.scenario == name and r.concurrency == conc), None)

    out = []

    def add(label: str, a: Row | None, b: Row | None, field_: str = "requests_per_s") -> None:
        if a and b and getattr(b, field_):
            out.append((label, f"{getattr(a, field_) / getattr(b, field_):.2f}"))

    ceiling, cnn = get("ceiling-v1", 64), get("v1-fashion-cnn", 64)
    naive_c1, cnn_c1 = get("naive-v1-fashion-cnn", 1), get("v1-fashion-cnn", 1)
    if naive_c1 and cnn_c1 and naive_c1.summary["p50_ms"]:
        out.append(("v1-fashion-cnn / naive, p50 at c1", f"{cnn_c1.summary['p50_ms'] / naive_c1.summary['p50_ms']:.2f}"))
    for c in (16, 64):
        add(f"v1-fashion-cnn / naive, req/s at c{c}", get("v1-fashion-cnn", c), get("naive-v1-fashion-cnn", c))
    add("v1-fashion-cnn / naive, 32 images/request, c16", get("v1-fashion-cnn-32", 16),
        get("naive-v1-fashion-cnn-32", 16))
    add("v1-fashion-cnn / ceiling, req/s at c64", cnn, ceiling)
    if cnn and ceiling and ceiling.summary["p99_ms"]:
        out.append(("v1-fashion-cnn / ceiling, p99 at c64", f"{cnn.summary['p99_ms'] / ceiling.summary['p99_ms']:.2f}"))
    add("v1-fashion-cnn batching on / off, c64", cnn, get("v1-fashion-cnn-nobatch", 64))
    add("v1-sst2-lstm batching on / off, c64", get("v1-sst2-lstm", 64), get("v1-sst2-lstm-nobatch", 64))
    add("v1-fashion-cnn int8 / fp32 (served), c64", get("v1-fashion-cnn-int8", 64), cnn)
    add("v1-fashion-cnn 2 workers / 1, c64", get("v1-fashion-cnn-2workers", 64), cnn)
    add("V2 binary / JSON, 32 img, c16", get("v2-binary-fashion-cnn-32", 16), get("v2-json-fashion-cnn-32", 16))
    # Every core by default (issue 25): the defaults against one worker, the ceiling and Triton.
    auto_c1, naive_c1 = get("v1-fashion-cnn-auto", 1), get("naive-v1-fashion-cnn", 1)
    if auto_c1 and naive_c1 and naive_c1.summary["p50_ms"]:
        out.append(("v1-fashion-cnn-auto / naive, p50 at c1",
                    f"{auto_c1.summary['p50_ms'] / naive_c1.summary['p50_ms']:.2f}"))
    for c in (1, 16, 64):
        add(f"V2 JSON auto / 1 worker, c{c}", get("v2-json-fashion-cnn-auto", c), get("v2-json-fashion-cnn", c))
        add(f"V2 JSON auto / ceiling, c{c}", get("v2-json-fashion-cnn-auto", c), get("ceiling-v2", c))
        add(f"V2 JSON ceiling, two processes / one, c{c}", get("ceiling-v2-2proc", c), get("ceiling-v2", c))
        add(f"V2 JSON auto / Triton, c{c}", get("v2-json-fashion-cnn-auto", c), get("triton-v2-json", c))
        add(f"V2 JSON 1 worker / Triton, c{c}", get("v2-json-fashion-cnn", c), get("triton-v2-json", c))
    for c in (16, 64):
        add(f"V2 JSON 32 img auto / Triton, c{c}", get("v2-json-fashion-cnn-32-auto", c), get("triton-v2-json-32", c))
        add(f"V2 JSON 32 img 1 worker / Triton, c{c}", get("v2-json-fashion-cnn-32", c), get("triton-v2-json-32", c))
        add(f"V2 JSON 32 img auto, 512-row / 128-row batches, c{c}", get("v2-json-fashion-cnn-32-auto-512", c),
            get("v2-json-fashion-cnn-32-auto", c))
    add("V2 binary int8 / fp32 (served), 32 img, c16", get("v2-binary-fashion-cnn-32-int8", 16),
        get("v2-binary-fashion-cnn-32", 16))
    for name, variant in (("v2-binary-fashion-cnn-32", served_variant), ("v2-binary-fashion-cnn-32-int8", "int8")):
        best_raw = max((r for r in raw if r["batch"] == 128 and r["variant"] == variant),
                       key=lambda r: r["items_per_s"], default=None)
        binary = get(name, 16)
        if best_raw and binary:
            out.append((f"{name} c16 / raw ORT {variant} batch 128 ({best_raw['threads']} threads), images/s",
                        f"{binary.items_per_s / best_raw['items_per_s']:.2f}"))
    return out


def plots(rows: list[Row], out: Path) -> bool:
    """throughput_latency.png in `out`; False, and nothing written, where matplotlib is not
    installed (the serving install has no plotting: the tables are the results)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = ("ceiling-v1", "v1-fashion-cnn", "v1-sst2-lstm")
    if not any(r.scenario in plotted and r.concurrency for r in rows):
        return True  # none of the plotted scenarios ran: nothing to draw
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for name in plotted:
        pts = [r for r in rows if r.scenario == name and r.concurrency]
        if pts:
            ax_t.plot([r.concurrency for r in pts], [r.requests_per_s for r in pts], marker="o", label=name)
            ax_l.plot([r.requests_per_s for r in pts], [r.summary["p99_ms"] for r in pts], marker="o", label=name)
    ax_t.set(title="throughput vs concurrency", xlabel="concurrent clients", ylabel="requests/s", xscale="log")
    ax_l.set(title="p99 latency vs throughput", xlabel="requests/s", ylabel="p99 ms", yscale="log")
    ax_t.legend()
    ax_l.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput_latency.png", dpi=80)
    plt.close(fig)
    return True


def served_cpu_variant(model_dir: Path) -> str:
    return samples.latest(model_dir, "fashion-cnn")[1].preferred_variant.get("cpu", "int8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--quick", action="store_true", help="2-second runs")
    known = {s.name: s for s in scenarios()}
    parser.add_argument("--only", nargs="+", choices=list(known), metavar="SCENARIO",
                        help="run only these scenarios: " + "; ".join(
                            f"{name} ({' '.join([s.note, *s.server_args]).strip() or 'defaults'})"
                            for name, s in known.items()))
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds of each paired comparison (0: none)")
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto",
                        help="closed-loop load generator; auto: wrk if installed")
    parser.add_argument("--protocols", action="store_true",
                        help="also HTTP binary against gRPC, and grpc.aio's ceiling, with perf_analyzer "
                             "(load_tests/protocols.py --ceiling)")
    parser.add_argument("--triton-python", type=Path, default=TRITON_PYTHON,
                        help="the Python of a venv with nvidia-pytriton and onnxruntime, for the triton-* "
                             "scenarios (default: .venv-triton/bin/python, or $TRITON_PYTHON)")
    parser.add_argument("--readme", action="store_true",
                        help="also write the results table into README.md, with the date and commit")
    args = parser.parse_args(argv)
    client = ("wrk" if wrk.available() else "aiohttp") if args.client == "auto" else args.client
    if client == "wrk" and not wrk.available():
        parser.error("wrk is not installed (apt-get install wrk)")
    print(f"closed-loop client: {client}", flush=True)
    if args.client == "auto" and client == "aiohttp":
        # Measured: on 2 cores it took a core and gave the service 0.56 of the ceiling, where
        # wrk gave 0.79 in the same hour (docs/benchmarks.md, 2026-12-05).
        print("warning: wrk is not installed (apt-get install wrk): the asyncio client shares the CPUs with "
              "the server and uses far more of them than wrk, so the service's figures come out low", file=sys.stderr,
              flush=True)
    duration = 2.0 if args.quick else args.duration
    chosen = [s for s in scenarios(args.triton_python, args.model_dir) if not args.only or s.name in args.only]
    if any(s.command for s in chosen) and not args.triton_python.exists():
        print(f"triton-* scenarios left out: no PyTriton interpreter at {args.triton_python} (make triton-peer, "
              "or --triton-python PATH)", flush=True)
        chosen = [s for s in chosen if not s.command]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # Read before the run: the commit measured is the one checked out when it started.
    shown = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--readme"]
    provenance = provenance_line(shown, client, duration) if args.readme else ""
    raw = raw_throughput(args.model_dir, seconds=1.0 if args.quick else 3.0)
    rows = [row for s in chosen for row in run_scenario(s, args.model_dir, duration, client)]
    comparisons = ratios(rows, raw, served_cpu_variant(args.model_dir))
    rounds = min(args.rounds, 2) if args.quick else args.rounds
    paired = [run_pairing(p, args.model_dir, duration, rounds, client) for p in pairings(chosen)] if rounds else []
    table = markdown(rows, raw, comparisons, paired)
    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "cpus": len(__import__("os").sched_getaffinity(0)), "processor": platform.processor()}
    (args.out / "results.json").write_text(json.dumps(
        {"started": started, "machine": machine, "duration_s": duration, "client": client,
         "rows": [asdict(r) for r in rows],
         "raw_ort": raw, "ratios": comparisons, "paired": paired}, indent=2))
    (args.out / "results.md").write_text(table)
    if not plots(rows, args.out):
        print("plots skipped: matplotlib is not installed (pip install matplotlib); the tables are complete")
    if args.readme:
        write_readme_results(ROOT / "README.md", readme_results(rows, raw, comparisons, paired, provenance))
    print()
    print(table)
    if args.protocols:
        print("\nHTTP binary and gRPC, perf_analyzer, fashion-cnn (load_tests/protocols.py):", flush=True)
        protocol_rows = protocols.run(args.model_dir, max(rounds, 1), 1000 if args.quick else 3000, ceiling=True)
        (args.out / "protocols.json").write_text(json.dumps(protocol_rows, indent=2))
        (args.out / "protocols.md").write_text(protocols.markdown(protocol_rows) + "\n")
        print(protocols.markdown(protocol_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
