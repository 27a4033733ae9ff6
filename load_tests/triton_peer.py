"""Triton as a peer: fashion-cnn served by NVIDIA's Triton Inference Server through PyTriton,
its dynamic batcher in front of the same ONNX file the service serves on CPU (the manifest's
preferred variant), one ONNX Runtime session with its default options. Clients send it the
service's V2 bodies unchanged: Triton parses them in its C++ front end.

PyTriton is not a dependency of this project (its wheel carries a Triton server build), so
this script runs in a virtual environment of its own and reads the manifest as plain JSON:

    python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton==0.7.0 onnxruntime
    .venv-triton/bin/python load_tests/triton_peer.py --port 8010 --model-dir models

`python -m load_tests.bench` starts it for its triton-* scenarios (--triton-python). Every port
binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MODEL = "fashion-cnn"
MAX_BATCH = 512
"""Rows per batch Triton may form: 16 requests of 32 images (the issue that asked for this
peer saw it form 487-row batches)."""


def newest(model_dir: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    folders = [p for p in (model_dir / MODEL).iterdir() if p.name.isdigit() and (p / "manifest.json").exists()]
    folder = max(folders, key=lambda p: int(p.name))
    return folder, json.loads((folder / "manifest.json").read_text())


def free_ports(count: int, taken: int) -> list[int]:
    """`count` loopback ports free now, all different and none of them `taken` (the HTTP port,
    not yet bound): each found port's socket is held until all are found. (Run as a script in
    PyTriton's environment, this cannot import load_tests.ports.)"""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            held.append(socket.socket())
            held[-1].bind(("127.0.0.1", 0))
            port = int(held[-1].getsockname()[1])
            if port != taken:
                ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--max-queue-delay-us", type=int, default=100)
    args = parser.parse_args()
    folder, manifest = newest(args.model_dir)
    variant = manifest["variants"][manifest.get("preferred_variant", {}).get("cpu", "fp32")]
    session = ort.InferenceSession(str(folder / variant["file"]), providers=["CPUExecutionProvider"])
    graph_input, graph_output = session.get_inputs()[0], session.get_outputs()[0]
    row_shape = tuple(int(d) for d in graph_input.shape[1:])

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {graph_output.name: session.run(None, {graph_input.name: inputs[graph_input.name]})[0]}

    grpc_port, metrics_port = free_ports(2, taken=args.port)
    config = TritonConfig(http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
                          grpc_port=grpc_port, metrics_address="127.0.0.1", metrics_port=metrics_port,
                          log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name=MODEL, infer_func=infer,
                    inputs=[Tensor(name=graph_input.name, dtype=np.float32, shape=row_shape)],
                    outputs=[Tensor(name=graph_output.name, dtype=np.float32, shape=(-1,))],
                    config=ModelConfig(max_batch_size=MAX_BATCH,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)))
        triton.serve()


if __name__ == "__main__":
    main()
