"""Triton's perf_analyzer, found and run against the service (HTTP or gRPC).

Where it comes from: $ORTSERVE_PERF_ANALYZER, else ../shared/tools/perf_analyzer, which
runs the `perf-analyzer` wheel (glibc 2.38 or newer) inside a Debian trixie root folder
(chroot, so as root). Inside that folder the tool sees only the folder's files: its
`--input-data` files must lie there, and are named by their path inside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from load_tests.server import ROOT, ServerProcess

SHARED = ROOT.parent / "shared" / "tools" / "perf_analyzer"
CHROOT = Path(os.environ.get("PERF_ANALYZER_ROOT", "/var/tmp/perf-analyzer-trixie"))


def find() -> str | None:
    given = os.environ.get("ORTSERVE_PERF_ANALYZER")
    if given:
        return given
    return str(SHARED) if SHARED.exists() and os.geteuid() == 0 else None


def input_folder(tool: str) -> tuple[Path, str]:
    """(where to write --input-data files, how the tool names that folder)."""
    if Path(tool).resolve() == SHARED.resolve():
        folder = CHROOT / "tmp" / "ortserve-inputs"
        return folder, "/tmp/ortserve-inputs"
    folder = Path("/tmp/ortserve-inputs")
    return folder, str(folder)


def shared_memory_folder(tool: str) -> Path:
    """Where the tool's POSIX shared-memory objects are, as the server sees them (the server's
    --shared-memory-dir): the root folder's /dev/shm for the shared copy, else /dev/shm."""
    return CHROOT / "dev" / "shm" if Path(tool).resolve() == SHARED.resolve() else Path("/dev/shm")


CUDA_RUNTIME = "nvidia-cuda-runtime-cu12"
"""The PyPI package whose libcudart.so.12 perf_analyzer loads (as libcudart.so) for
`--shared-memory`, system memory too, or it aborts: "Cannot open CUDA runtime library"."""


def install_cuda_runtime(tool: str) -> None:
    """For the shared copy: libcudart in its root folder, from CUDA_RUNTIME's wheel (once;
    a few MB from PyPI). Another perf_analyzer finds the library where its system has it."""
    if Path(tool).resolve() != SHARED.resolve():
        return
    library = CHROOT / "usr" / "lib" / "x86_64-linux-gnu" / "libcudart.so"
    if library.exists():
        return
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux2014_x86_64", "--python-version", "3.12", "-d", folder,
                        CUDA_RUNTIME], check=True, timeout=300)
        wheel = next(Path(folder).glob("*.whl"))
        with zipfile.ZipFile(wheel) as unpacked:
            data = unpacked.read("nvidia/cuda_runtime/lib/libcudart.so.12")
    temporary = library.with_name(".libcudart.so.partial")
    temporary.write_bytes(data)
    temporary.replace(library)


PROTOCOLS = ("http", "grpc", "grpc-stream")
"""HTTP (binary tensors), unary gRPC calls, and a gRPC stream (`--streaming`: ModelStreamInfer)."""


def target(server: ServerProcess, protocol: str) -> str:
    """host:port of the server for `protocol`."""
    return f"127.0.0.1:{server.port}" if protocol == "http" else server.grpc_target


QUICK_CHECK = ("--measurement-interval", "500", "--stability-percentage", "100", "--max-trials", "10")
"""Options for a run that checks the tool works against the service, not a measurement:
short windows, any spread accepted, and enough of them to settle on a busy machine (three
were not once in CI: "Failed to obtain stable measurement")."""


def run(tool: str, model: str, server: ServerProcess, protocol: str, concurrency: int, *options: str,
        timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """One perf_analyzer measurement of `server` over one of PROTOCOLS."""
    streaming = ["--streaming"] if protocol == "grpc-stream" else []
    command = [tool, "-m", model, "-u", target(server, protocol), "-i", protocol.removesuffix("-stream"),
               "--concurrency-range", str(concurrency), *streaming, *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def figures(stdout: str) -> dict[str, float]:
    """Throughput (infer/s) and latency percentiles (ms) of perf_analyzer's report."""
    found: dict[str, float] = {}
    throughput = re.findall(r"Throughput: ([\d.]+) infer/sec", stdout)
    if throughput:
        found["infer_per_s"] = float(throughput[-1])
    for name in ("p50", "p90", "p99"):
        values = re.findall(rf"{name} latency: (\d+) usec", stdout)
        if values:
            found[f"{name}_ms"] = int(values[-1]) / 1000
    return found
