"""What a model's instances buy (Triton's instance_group; `onnxruntime.instances` in a
manifest): the shipped models against copies of them given N instances, both servers up at
once, in alternating rounds (load_tests/versions.py's pairing).

    python -m load_tests.instances --instances 2 --rounds 4 --duration 4

Binds 127.0.0.1; every run stops by itself. Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from load_tests import versions
from load_tests.server import ROOT

MODELS = ("fashion-cnn", "sst2-lstm")


def repository(home: Path, instances: int) -> None:
    """Every version of the shipped models, each manifest given `instances`."""
    for name in MODELS:
        shutil.copytree(ROOT / "models" / name, home / name)
        for path in (home / name).glob("*/manifest.json"):
            manifest = json.loads(path.read_text())
            manifest["onnxruntime"] = manifest.get("onnxruntime", {}) | {"instances": instances}
            path.write_text(json.dumps(manifest, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.instances", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", default="1")
    parser.add_argument("--only", nargs="+", default=["v1-sst2-lstm", "v1-fashion-cnn", "v2-json-fashion-cnn-32"],
                        metavar="SCENARIO", help="load_tests.versions' scenarios")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="instances-") as folder:
        home = Path(folder) / "models"
        repository(home, args.instances)
        print(f"this: {args.instances} instances per model; base: the shipped models", flush=True)
        return versions.main(["--model-dir", str(home), "--base-model-dir", str(ROOT / "models"),
                              "--rounds", str(args.rounds), "--duration", str(args.duration),
                              "--concurrency", str(args.concurrency), "--workers", args.workers,
                              "--only", *args.only])


if __name__ == "__main__":
    raise SystemExit(main())
