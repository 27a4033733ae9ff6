"""The CUDA path, measured: raw ONNX Runtime on CUDA against the service on CUDA.

    python -m load_tests.gpu --data-dir ../shared/data --out gpu-results

On a machine with onnxruntime-gpu and a GPU it prints, as tables:
  1. what onnxruntime offers and which providers a session really got;
  2. raw in-process ONNX Runtime CUDA throughput of fashion-cnn per variant and batch size
     (numpy in and out, as the service feeds it, so host-device copies are counted), and
     the same batches through IO binding, with pageable and with pinned host buffers
     (load_tests/io_binding.py);
  3. fp16 against fp32 on the full test sets: accuracy and agreement of the predictions;
  4. the service on CUDA (and the naive one-run-per-request endpoint on CUDA): p50 at
     concurrency 1, single images at c64, V2 binary 32-image requests at c16, each run's
     mean batch size, and its throughput against raw ORT at that same batch size.
`--providers CPUExecutionProvider` runs the same script on a CPU (to try it out; the
figures then say nothing about GPUs). Servers bind 127.0.0.1 and every run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import app.datasets as data
from app.manifest import ImagePreprocessing, TextPreprocessing
from app.preprocess import Tokenizer, normalize_pixels
from app.runtime import OrtModel, ort_options
from load_tests import samples
from load_tests.bench import cnn_v1, lstm_v1, v2_binary_32
from load_tests.client import Payload, closed_loop
from load_tests.io_binding import BoundRun, PageLocked
from load_tests.raw_ort import items_per_s
from load_tests.server import ROOT, ServerProcess
from load_tests.stats import Sample, Summary, histogram_totals, summarize

NAIVE = "load_tests.naive:app"


def environment(providers: list[str]) -> dict[str, Any]:
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        gpu = f"nvidia-smi failed: {error}"
    return {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
            "asked_providers": providers, "gpu": gpu, "cpus": os.cpu_count()}


def session(model_dir: Path, name: str, variant: str, providers: list[str]) -> OrtModel:
    folder, manifest = samples.latest(model_dir, name)
    options = replace(ort_options(providers, 0, 1), wide_batch_rows=0)  # one session: raw ORT as configured
    return OrtModel((folder / manifest.variants[variant].file).read_bytes(), options)  # type: ignore[index]


def raw_throughput(model: OrtModel, feed: dict[str, np.ndarray], seconds: float) -> float:
    """Items per second of back-to-back runs with host (numpy) inputs and outputs."""
    return items_per_s(lambda: model.run(feed), len(next(iter(feed.values()))), seconds, warmup_runs=5)


def raw_rows(model: OrtModel, variant: str, batch: int, feed: dict[str, np.ndarray], seconds: float,
             page_locked: PageLocked | None) -> dict[str, Any]:
    """One row of the raw table: numpy in and out (as the service runs a batch), and the same
    batch through IO binding, from pageable and (with a GPU) pinned host memory."""
    row: dict[str, Any] = {"variant": variant, "providers": model.providers, "batch": batch,
                           "items_per_s": raw_throughput(model, feed, seconds)}
    row["io_binding_items_per_s"] = items_per_s(BoundRun(model, feed), batch, seconds, warmup_runs=5)
    if page_locked is not None:
        row["io_binding_pinned_items_per_s"] = items_per_s(BoundRun(model, feed, page_locked), batch, seconds,
                                                           warmup_runs=5)
    return row


def image_feed(model_dir: Path, batch: int) -> dict[str, np.ndarray]:
    return {samples.image_input(model_dir)[0]: samples.normalized(batch, model_dir)}


def agreement(model_dir: Path, data_dir: Path, providers: list[str]) -> list[dict[str, Any]]:
    """fp16 and fp32 of each model on its whole test set, on the asked providers."""
    out = []
    # The test splits alone (the training files need not travel to a GPU machine).
    fashion_images = data.read_idx(data_dir / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
    fashion_labels = data.read_idx(data_dir / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    sst2 = data.read_glue_tsv(data_dir / "sst2" / "test.tsv")
    _, cnn = samples.latest(model_dir, "fashion-cnn")
    assert isinstance(cnn.preprocessing, ImagePreprocessing)
    pixels = normalize_pixels(fashion_images, cnn.preprocessing)
    folder, lstm = samples.latest(model_dir, "sst2-lstm")
    assert isinstance(lstm.preprocessing, TextPreprocessing)
    tokenizer = Tokenizer.from_file(folder / lstm.preprocessing.vocabulary_file, lstm.preprocessing)
    texts = list(sst2.texts)
    for name, manifest, count, labels in (("fashion-cnn", cnn, len(pixels), fashion_labels.astype(np.int64)),
                                          ("sst2-lstm", lstm, len(texts), np.asarray(sst2.labels))):
        predictions = {}
        for variant in ("fp32", "fp16"):
            model = session(model_dir, name, variant, providers)
            picked = []
            for start in range(0, count, 256):
                if name == "fashion-cnn":
                    feed = {manifest.inputs[0].name: pixels[start:start + 256]}
                else:
                    ids, lengths = tokenizer.encode_batch(texts[start:start + 256])
                    feed = {manifest.inputs[0].name: ids, manifest.inputs[1].name: lengths}
                picked.append(np.argmax(model.run(feed)[manifest.outputs[0].name], axis=1))
            predictions[variant] = np.concatenate(picked)
            if variant == "fp32":
                session_providers = model.providers
        out.append({"model": name, "items": count, "providers": session_providers,
                    "fp32_accuracy": float((predictions["fp32"] == labels).mean()),
                    "fp16_accuracy": float((predictions["fp16"] == labels).mean()),
                    "agreement": float((predictions["fp16"] == predictions["fp32"]).mean())})
    return out


def _client(url: str, payload: Payload, concurrency: int, duration_s: float) -> list[Sample]:
    return asyncio.run(closed_loop(url, payload, concurrency, duration_s))[0]


def load(url: str, payload: Payload, concurrency: int, duration_s: float, processes: int) -> Summary:
    """A closed loop spread over client processes, so the client is not the limit."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        parts = list(pool.map(_client, [url] * processes, [payload] * processes, shares,
                              [duration_s] * processes))
    return summarize([s for part in parts for s in part], duration_s, payload.items)


def serve_runs(model_dir: Path, providers: list[str], duration_s: float, client_processes: int,
               cuda_model: OrtModel, configs: list[tuple[str, list[str], str | None]]) -> list[dict[str, Any]]:
    env = {"ORTSERVE_PROVIDERS": ",".join(providers), "NAIVE_MODEL_DIR": str(model_dir),
           "NAIVE_PROVIDERS": ",".join(providers)}
    runs = [("v1 1 image", cnn_v1, 1, "fashion-cnn"), ("v1 1 image", cnn_v1, 64, "fashion-cnn"),
            ("v2 binary 32 images", v2_binary_32, 16, "fashion-cnn"), ("v2 binary 32 images", v2_binary_32, 64, "fashion-cnn"),
            ("v1 1 sentence", lstm_v1, 1, "sst2-lstm"), ("v1 1 sentence", lstm_v1, 64, "sst2-lstm")]
    rows = []
    for label, args, asgi in configs:
        with ServerProcess(["--model-dir", str(model_dir), *args], asgi=asgi, env=env) as server:
            for what, make_payload, concurrency, model in runs:
                if asgi and (model != "fashion-cnn" or make_payload is v2_binary_32):  # naive: V1 images
                    continue
                payload = make_payload(model_dir)
                before = "" if asgi else server.metrics()
                summary = load(server.url, payload, concurrency, duration_s, client_processes)
                row: dict[str, Any] = {"server": label, "request": what, "model": model,
                                       "concurrency": concurrency, "items_per_s": summary.items_per_s,
                                       "requests_per_s": summary.requests_per_s, "p50_ms": summary.p50_ms,
                                       "p99_ms": summary.p99_ms, "errors": summary.errors}
                if not asgi:
                    after = server.metrics()
                    s0, c0 = histogram_totals(before, "ortserve_batch_size", model)
                    s1, c1 = histogram_totals(after, "ortserve_batch_size", model)
                    row["mean_batch"] = (s1 - s0) / (c1 - c0) if c1 > c0 else None
                    if model == "fashion-cnn" and row["mean_batch"]:
                        batch = max(1, round(row["mean_batch"]))
                        raw = raw_throughput(cuda_model, image_feed(model_dir, batch), 2.0)
                        row["raw_at_batch"] = raw
                        row["share_of_raw"] = summary.items_per_s / raw
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"onnxruntime {env['onnxruntime']}; offers {env['available_providers']}; GPU: {env['gpu']}; "
             f"{env['cpus']} CPUs", "", "Raw ONNX Runtime, fashion-cnn, images/s: numpy in and out (session.run), "
             "IO binding (outputs on the device, copied out), IO binding with pinned host buffers:", "",
             "| variant | providers | batch | numpy in and out | IO binding | IO binding, pinned |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {','.join(r['providers'])} | {r['batch']} | {r['items_per_s']:,.0f} | "
              f"{_rate(r.get('io_binding_items_per_s'))} | {_rate(r.get('io_binding_pinned_items_per_s'))} |"
              for r in report["raw"]]
    if report.get("pinned_unavailable"):
        lines += ["", f"Pinned host buffers not measured: {report['pinned_unavailable']}"]
    lines += ["", "fp16 against fp32, whole test sets:", "",
              "| model | items | providers | fp32 accuracy | fp16 accuracy | agreement |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['items']} | {','.join(r['providers'])} | {r['fp32_accuracy']:.2%} | "
              f"{r['fp16_accuracy']:.2%} | {r['agreement']:.2%} |" for r in report["agreement"]]
    lines += ["", "Served (closed loop, client spread over processes):", "",
              "| server | request | model | conc | items/s | p50 ms | p99 ms | errors | mean batch | "
              "raw ORT at that batch, items/s | share of raw |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["serve"]:
        batch = "-" if r.get("mean_batch") is None else f"{r['mean_batch']:.1f}"
        raw = f"{r['raw_at_batch']:,.0f}" if "raw_at_batch" in r else "-"
        share = f"{r['share_of_raw']:.2f}" if "share_of_raw" in r else "-"
        lines.append(f"| {r['server']} | {r['request']} | {r['model']} | {r['concurrency']} | "
                     f"{r['items_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors'] or 0} | "
                     f"{batch} | {raw} | {share} |")
    return "\n".join(lines) + "\n"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-results")
    parser.add_argument("--providers", default="CUDAExecutionProvider,CPUExecutionProvider")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per load run")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--serve", nargs="+", default=["naive", "", "--max-batch-size 128"],
                        help="server configurations: 'naive', or the service's arguments ('' for defaults)")
    parser.add_argument("--serve-only", action="store_true", help="skip the raw table and fp16 agreement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 32, 64, 128, 256, 512, 1024, 2048],
                        help="batch sizes of the raw table")
    args = parser.parse_args(argv)
    configs = [("naive", [], NAIVE) if c == "naive" else (f"service {c}".strip(), c.split(), None)
               for c in args.serve]
    providers = args.providers.split(",")
    report: dict[str, Any] = {"environment": environment(providers)}
    print(json.dumps(report["environment"]), flush=True)
    fp32 = session(args.model_dir, "fashion-cnn", "fp32", providers)
    print("session providers:", fp32.providers, flush=True)
    if fp32.providers[0] != providers[0]:
        print(f"the session fell back to {fp32.providers}: {providers[0]} is not usable here")
        return 1
    report["raw"], report["agreement"] = [], []
    page_locked = None
    try:
        page_locked = PageLocked()
    except OSError as e:
        report["pinned_unavailable"] = str(e)
    for variant in () if args.serve_only else ("fp32", "fp16"):
        model = session(args.model_dir, "fashion-cnn", variant, providers)
        for batch in args.batches:
            report["raw"].append(raw_rows(model, variant, batch, image_feed(args.model_dir, batch), 1.5, page_locked))
            print(json.dumps(report["raw"][-1]), flush=True)
    if page_locked is not None:
        page_locked.close()
    if not args.serve_only:
        report["agreement"] = agreement(args.model_dir, args.data_dir, providers)
    print(json.dumps(report["agreement"]), flush=True)
    _, manifest = samples.latest(args.model_dir, "fashion-cnn")
    served = manifest.preferred_variant.get("cuda" if "CUDA" in providers[0] else "cpu", "fp32")
    report["served_variant"] = served
    report["serve"] = serve_runs(args.model_dir, providers, args.duration, args.client_processes,
                                 session(args.model_dir, "fashion-cnn", served, providers), configs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "gpu.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
