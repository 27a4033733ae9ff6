"""Input files for Triton's perf_analyzer (`--input-data FILE`) from the bundled samples.

perf_analyzer's default random bytes are not valid inputs for these models (NaN pixels,
token ids outside the vocabulary), and the server rightly refuses them with 400.

    python -m load_tests.perf_inputs --out bench-results
    perf_analyzer -m sst2-lstm -u 127.0.0.1:8000 -i http --input-data bench-results/sst2-lstm.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.preprocess import Tokenizer
from load_tests import samples
from load_tests.server import ROOT


def fashion(model_dir: Path, n: int) -> dict:
    x = samples.normalized(n, model_dir)
    name, _ = samples.image_input(model_dir)
    return {"data": [{name: {"content": img.ravel().tolist(), "shape": list(img.shape)}} for img in x]}


def sst2(model_dir: Path, n: int) -> dict:
    folder, manifest = samples.latest(model_dir, "sst2-lstm")
    tokenizer = Tokenizer.from_file(folder / manifest.preprocessing.vocabulary_file,  # type: ignore[union-attr]
                                    manifest.preprocessing)  # type: ignore[arg-type]
    ids_name, lengths_name = (spec.name for spec in manifest.inputs)
    data = []
    for text in samples.sentences()[:n]:
        ids = tokenizer.encode(text)
        data.append({ids_name: {"content": ids, "shape": [len(ids)]},
                     lengths_name: {"content": [len(ids)], "shape": [1]}})
    return {"data": data}


def write(model_dir: Path, out: Path, n: int) -> dict[str, Path]:
    """Each shipped model's input file, by model name."""
    written = {}
    for name, build in (("fashion-cnn", fashion), ("sst2-lstm", sst2)):
        path = out / f"{name}.json"
        path.write_text(json.dumps(build(model_dir, n)))
        written[name] = path
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("-n", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write(args.model_dir, args.out, args.n).values():
        print(path)


if __name__ == "__main__":
    main()
