"""Requests of other lengths padded together (a drop-in's config.json `batching.pad: true`)
against batching only requests of one shape (the default), on a BERT-like encoder made here:
token ids, an attention mask and token types of 8 to 64 tokens, perf_analyzer over HTTP, both
servers up, alternating rounds. Prints a table; asserts nothing.

    python -m load_tests.padding [--layers 4] [--width 256] [--concurrency 64] [--rounds 3]
                                 [--shortest 8] [--longest 64] [--interval-ms 3000]

Needs the train extra (torch builds the encoder) and perf_analyzer (load_tests/perf_analyzer.py).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import httpx
import numpy as np

from load_tests import perf_analyzer
from load_tests.server import ServerProcess

MODEL = "encoder"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
VOCABULARY = 1000


def build_encoder(path: Path, layers: int, width: int, longest: int) -> None:
    """A transformer encoder of `layers` layers, pooled over its unmasked tokens into two
    scores, as a sequence classifier exported from PyTorch is: its padding is masked."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
            self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
            self.n1, self.n2 = nn.LayerNorm(width), nn.LayerNorm(width)

        def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            attended = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / width**0.5 + bias, -1) @ self.v(h)
            h = self.n1(h + self.o(attended))
            return self.n2(h + self.ff(h))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens, self.types = nn.Embedding(VOCABULARY, width), nn.Embedding(2, width)
            self.positions = nn.Embedding(longest, width)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.head = nn.Linear(width, 2)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            positions = torch.cumsum(torch.ones_like(ids), 1) - 1
            h = self.tokens(ids) + self.types(types) + self.positions(positions)
            bias = (mask.unsqueeze(1) - 1).float() * 1e4  # padded keys get no attention
            for layer in self.layers:
                h = layer(h, bias)
            kept = mask.unsqueeze(-1).float()
            return self.head((h * kept).sum(1) / kept.sum(1))

    from training.export import export_onnx

    ids = torch.randint(1, VOCABULARY, (2, 16))
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(Encoder(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), path, input_names=INPUTS,
                output_names=["logits"],
                dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in INPUTS}, "logits": {0: "batch"}})


def input_data(shortest: int, longest: int, count: int = 64, seed: int = 0) -> dict[str, list[dict[str, object]]]:
    """perf_analyzer's --input-data: `count` requests of one row each, of lengths drawn evenly
    from shortest..longest, that it sends in turn."""
    rng = np.random.default_rng(seed)
    data = []
    for length in rng.integers(shortest, longest + 1, count).tolist():
        data.append({"input_ids": {"content": rng.integers(1, VOCABULARY, length).tolist(), "shape": [length]},
                     "attention_mask": {"content": [1] * length, "shape": [length]},
                     "token_type_ids": {"content": [0] * length, "shape": [length]}})
    return {"data": data}


def repository(root: Path, model: Path, pad: bool) -> Path:
    folder = root / ("padded" if pad else "one-shape")
    (folder / MODEL / "1").mkdir(parents=True)
    (folder / MODEL / "1" / "model.onnx").write_bytes(model.read_bytes())
    if pad:
        (folder / MODEL / "config.json").write_text(json.dumps({"batching": {"pad": True}}))
    return folder


def measure(tool: str, server: ServerProcess, data: str, concurrency: int, *options: str) -> tuple[float, float]:
    """(requests/s, mean rows per batch) of one perf_analyzer measurement."""
    def counts() -> tuple[int, int]:
        stats = httpx.get(f"{server.url}/v2/models/{MODEL}/stats", timeout=10).json()["model_stats"][0]
        return stats["inference_count"], stats["execution_count"]

    rows_before, batches_before = counts()
    done = perf_analyzer.run(tool, MODEL, server, "http", concurrency, "--input-data", data, *options)
    found = re.search(r"Throughput: ([\d.]+) infer/sec", done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"perf_analyzer failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rows_after, batches_after = counts()
    return float(found.group(1)), (rows_after - rows_before) / max(1, batches_after - batches_before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shortest", type=int, default=8)
    parser.add_argument("--longest", type=int, default=64)
    parser.add_argument("--interval-ms", type=int, default=3000)
    args = parser.parse_args()
    tool = perf_analyzer.find()
    if tool is None:
        raise SystemExit("perf_analyzer is not on this machine (load_tests/perf_analyzer.py says where it is looked for)")
    inputs, named = perf_analyzer.input_folder(tool)
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "padding.json").write_text(json.dumps(input_data(args.shortest, args.longest)))
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "encoder.onnx"
        build_encoder(model, args.layers, args.width, args.longest)
        padded_repo, one_shape_repo = repository(Path(folder), model, True), repository(Path(folder), model, False)
        one_worker = ["--workers", "1"]
        with ServerProcess(["--model-dir", str(padded_repo), *one_worker]) as padded, \
                ServerProcess(["--model-dir", str(one_shape_repo), *one_worker]) as one_shape:
            rows = []
            window = ("--measurement-interval", str(args.interval_ms))
            for round_ in range(1, args.rounds + 1):
                a, a_rows = measure(tool, padded, f"{named}/padding.json", args.concurrency, *window)
                b, b_rows = measure(tool, one_shape, f"{named}/padding.json", args.concurrency, *window)
                rows.append((round_, a, a_rows, b, b_rows))
    print(f"\nencoder of {args.layers} layer(s), {args.width} wide; requests of {args.shortest}-{args.longest} tokens; "
          f"perf_analyzer -i http, c{args.concurrency}; one worker each\n")
    print("| round | padded req/s | rows per batch | one shape req/s | rows per batch | padded / one shape |")
    print("|---|---|---|---|---|---|")
    for round_, a, a_rows, b, b_rows in rows:
        print(f"| {round_} | {a:,.0f} | {a_rows:.1f} | {b:,.0f} | {b_rows:.1f} | {a / b:.2f} |")
    ratios = sorted(a / b for _, a, _, b, _ in rows)
    print(f"\nmedian padded / one shape: {ratios[len(ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
