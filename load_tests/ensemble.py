"""What an ensemble's step costs: fashion-cnn behind a preprocessing step, as Triton's
ensembles are mostly used ("data preprocessing -> inference"), against fashion-cnn alone.

The repository (a temporary copy): fashion-cnn as shipped; `fashion-preprocess`, a graph
that scales raw UINT8 pixels as fashion-cnn's manifest says (Cast, Mul, Sub, Div: the
same arithmetic as app/preprocess.py); and `fashion-pipeline`, an ensemble of the two
(a config.pbtxt, an empty version folder). Both are sent the same bundled test image as
V2 JSON: the ensemble its 784 raw pixels, fashion-cnn the 784 floats a client scaled
itself. The answers are checked to agree first; then wrk, one server, the two cases in
alternating rounds at each concurrency.

    python -m load_tests.ensemble --rounds 5 --duration 4

Builds the step with onnx (the train extra). Binds 127.0.0.1; every run stops by itself.
Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import httpx
import numpy as np
import orjson

from load_tests import samples, wrk
from load_tests.client import Payload
from load_tests.server import ROOT, ServerProcess
from load_tests.stats import Summary, ratio_cells

MODEL = "fashion-cnn"
STEP = "fashion-preprocess"
ENSEMBLE = "fashion-pipeline"


def preprocessing_graph(model_dir: Path) -> bytes:
    """Raw UINT8 pixels [N, C, H, W] -> fashion-cnn's input, scaled as its manifest says."""
    from onnx import TensorProto, helper

    spec = samples.image_spec(model_dir)
    name, _ = samples.image_input(model_dir)
    shape = ["n", spec.channels, spec.height, spec.width]
    constants = [helper.make_tensor(k, TensorProto.FLOAT, [], [float(v)])
                 for k, v in (("scale", spec.scale), ("mean", spec.mean), ("std", spec.std))]
    graph = helper.make_graph(
        [helper.make_node("Cast", ["raw"], ["wide"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["wide", "scale"], ["scaled"]),
         helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
         helper.make_node("Div", ["centred", "std"], [name])], "preprocess",
        [helper.make_tensor_value_info("raw", TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return bytes(model.SerializeToString())


def ensemble_config(model_dir: Path) -> str:
    spec = samples.image_spec(model_dir)
    name, logits = samples.image_input(model_dir)
    classes = samples.latest(model_dir, MODEL)[1].outputs[0].shape[-1]
    dims = f"[ {spec.channels}, {spec.height}, {spec.width} ]"
    return f"""name: "{ENSEMBLE}"
platform: "ensemble"
max_batch_size: 64
input [ {{ name: "raw" data_type: TYPE_UINT8 dims: {dims} }} ]
output [ {{ name: "{logits}" data_type: TYPE_FP32 dims: [ {classes} ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "{STEP}" model_version: -1 input_map {{ key: "raw" value: "raw" }}
    output_map {{ key: "{name}" value: "scaled" }} }},
  {{ model_name: "{MODEL}" model_version: -1 input_map {{ key: "{name}" value: "scaled" }}
    output_map {{ key: "{logits}" value: "{logits}" }} }}
] }}
"""


def repository(home: Path) -> None:
    shutil.copytree(ROOT / "models" / MODEL, home / MODEL)
    (home / STEP / "1").mkdir(parents=True)
    (home / STEP / "1" / "model.onnx").write_bytes(preprocessing_graph(ROOT / "models"))
    (home / ENSEMBLE / "1").mkdir(parents=True)
    (home / ENSEMBLE / "config.pbtxt").write_text(ensemble_config(ROOT / "models"))


def bodies() -> dict[str, Payload]:
    spec = samples.image_spec(ROOT / "models")
    raw = samples.images(spec)[:1].reshape(1, spec.channels, spec.height, spec.width)
    ensemble = orjson.dumps({"inputs": [{"name": "raw", "shape": list(raw.shape), "datatype": "UINT8",
                                         "data": raw.ravel().tolist()}]})
    headers = {"Content-Type": "application/json"}
    return {"ensemble": Payload(f"/v2/models/{ENSEMBLE}/infer", ensemble, headers),
            "model alone": Payload(f"/v2/models/{MODEL}/infer", samples.v2_json(1, ROOT / "models"), headers)}


def agree(url: str, payloads: dict[str, Payload]) -> float:
    """The largest difference between the two answers' logits (they must agree)."""
    answers = [httpx.post(url + p.path, content=p.body, headers=p.headers, timeout=30) for p in payloads.values()]
    for answer in answers:
        answer.raise_for_status()
    logits = [np.array(a.json()["outputs"][0]["data"], dtype=np.float32) for a in answers]
    return float(np.abs(logits[0] - logits[1]).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--workers", default="1")
    args = parser.parse_args(argv)
    if not wrk.available():
        parser.error("wrk is not installed (apt-get install wrk)")
    payloads = bodies()
    with tempfile.TemporaryDirectory(prefix="ensemble-bench-") as folder:
        home = Path(folder) / "models"
        repository(home)
        with ServerProcess(["--model-dir", str(home), "--workers", args.workers]) as server:
            difference = agree(server.url, payloads)
            print(f"largest difference between the two answers' logits: {difference:.2e}")
            if difference > 1e-4:
                raise SystemExit("the ensemble and the model alone disagree")
            got: dict[tuple[str, int], list[Summary]] = {}
            for i in range(args.rounds):
                for concurrency in args.concurrency:
                    order = list(payloads.items())
                    for case, payload in order if i % 2 == 0 else order[::-1]:
                        summary, _ = wrk.closed_loop(server.url, payload, concurrency, args.duration)
                        if summary.errors:
                            raise SystemExit(f"{case} c{concurrency}: errors {summary.errors}")
                        got.setdefault((case, concurrency), []).append(summary)
                        print(f"round {i + 1} {case} c{concurrency}: {summary.requests_per_s:,.0f} req/s, "
                              f"p50 {summary.p50_ms:.2f} ms", flush=True)
    print(f"\n| c, workers {args.workers} | ensemble req/s | model alone req/s | ensemble / alone, per round | median "
          "| p50 ms ensemble / alone |")
    print("|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        ours, alone = got[("ensemble", concurrency)], got[("model alone", concurrency)]
        ratios = [a.requests_per_s / b.requests_per_s for a, b in zip(ours, alone, strict=True)]
        print(f"| {concurrency} | {statistics.median(s.requests_per_s for s in ours):,.0f} | "
              f"{statistics.median(s.requests_per_s for s in alone):,.0f} | {ratio_cells(ratios)} | "
              f"{statistics.median(s.p50_ms for s in ours):.2f} / {statistics.median(s.p50_ms for s in alone):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
