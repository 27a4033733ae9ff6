"""Worker processes as `python -m app` starts them: one per usable CPU by default, and one
repository for all of them (a load under load reaches every worker without a failed request;
a worker restarted after a crash serves what the repository API last asked)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import tritonclient.grpc as grpcclient

from app.processes import available_cpus
from load_tests import samples
from load_tests.server import ServerProcess
from tests.app.conftest import copy_model, wait_for
from tests.conftest import MODELS

MODEL = "fashion-cnn"
TOKEN = "s3cret-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BODY = samples.v2_json(1, MODELS)


def reports(folder: Path) -> dict[int, dict[str, Any]]:
    """Each live worker's report (app/repository/shared.py), by pid."""
    found = {}
    for path in (folder / "workers").glob("*.json"):
        try:
            found[int(path.stem)] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced
    return found


def test_workers_auto_starts_one_per_usable_cpu(tmp_path: Path) -> None:
    """The default, as a user gets it (the test suite's servers otherwise run one worker)."""
    with ServerProcess(["--model-dir", str(copy_model(tmp_path / "models", MODEL, 1).parent.parent),
                        "--no-warmup"], env={"ORTSERVE_WORKERS": "auto"}) as server:
        assert server.process is not None
        # One CPU: uvicorn serves in its own process (no supervisor, no workers).
        assert (len(server.worker_pids()) or 1) == available_cpus()
        # The first 200 came from one worker; every worker reads the others' reports as it is
        # asked, so on fresh connections, which the kernel spreads over all of them, each
        # answers 200 at once (when each read them only every FOLLOW_S, the last to start
        # answered 200 a moment before the others did, and this flaked).
        assert [httpx.get(f"{server.url}/v2/health/ready").status_code for _ in range(16)] == [200] * 16


def test_a_load_under_load_reaches_every_worker_and_a_restarted_worker_follows(tmp_path: Path) -> None:
    root, control = tmp_path / "models", tmp_path / "control"
    copy_model(root, MODEL, 1)
    args = ["--model-dir", str(root), "--workers", "2", "--model-control-mode", "explicit", "--load-model", MODEL,
            "--admin-token", TOKEN, "--control-dir", str(control), "--no-warmup"]
    with ServerProcess(args) as server:
        workers = wait_for(lambda: len(reports(control)) == 2 and reports(control))
        assert {tuple(r["serving"][MODEL]) for r in workers.values()} == {("1",)}

        # Requests on fresh connections (the kernel spreads them over both workers) while
        # version 2 is loaded through the API.
        answers: Counter[str] = Counter()
        stop = threading.Event()

        def send() -> None:
            while not stop.is_set():
                response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=BODY, timeout=30)
                answers[str(response.status_code) if response.status_code != 200 else
                        "v" + response.json()["model_version"]] += 1

        senders = [threading.Thread(target=send) for _ in range(4)]
        for sender in senders:
            sender.start()
        try:
            wait_for(lambda: answers.total() > 20)
            copy_model(root, MODEL, 2)
            loaded = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", headers=ADMIN, timeout=120)
            assert loaded.status_code == 200, loaded.text
            # The call answered once every worker serves version 2: none answers version 1 now.
            served_after = answers.total()
            wait_for(lambda: answers.total() > served_after + 40)
        finally:
            stop.set()
            for sender in senders:
                sender.join()
        assert set(answers) <= {"v1", "v2"}, answers  # not one failed request
        assert {tuple(r["serving"][MODEL]) for r in reports(control).values()} == {("2",)}
        after = Counter(httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=BODY).json()["model_version"]
                        for _ in range(40))
        assert after == {"2": 40}
        # The console's figures are every worker's (the /metrics merge), not the answering one's.
        sent = answers.total() + 40
        summary = wait_for(lambda: (found := httpx.get(f"{server.url}/console/summary").json())
                           and found["models"][MODEL]["requests"] >= sent and found)
        assert summary["workers"] == 2
        assert summary["models"][MODEL]["errors"] == 0

        # Unloaded through one worker: both stop serving it. Then one worker dies; uvicorn
        # starts another, which loads its --load-model set and then applies the unload.
        unloaded = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/unload", headers=ADMIN, timeout=60)
        assert unloaded.status_code == 200, unloaded.text
        assert [r["serving"] for r in reports(control).values()] == [{}, {}]
        victim = sorted(reports(control))[0]
        os.kill(victim, signal.SIGKILL)
        assert server.process is not None
        replaced = wait_for(lambda: (found := reports(control)) and victim not in found and len(found) == 2 and found)
        assert [r["serving"] for r in replaced.values()] == [{}, {}]
        # Ready again once the surviving worker has read the new one's report (it looks every
        # FOLLOW_S): asked at once, it may still count one worker short and rightly say 503.
        wait_for(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200)
        assert server.worker_pids() == set(replaced)

        # The gRPC repository call goes the same way.
        with grpcclient.InferenceServerClient(server.grpc_target) as client:
            client.load_model(MODEL, headers={"authorization": f"Bearer {TOKEN}"})
        assert {tuple(r["serving"][MODEL]) for r in reports(control).values()} == {("2",)}


def tcp_sockets_by_inode() -> dict[int, tuple[int, int, str]]:
    """Every IPv4 TCP socket: (local port, remote port, state: 0A listening, 01 established), by inode."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        found[int(fields[9])] = (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[3])
    return found


def sockets_of(pid: int, port: int, clients: set[int], tcp: dict[int, tuple[int, int, str]]) -> tuple[set[int], int]:
    """A process's TCP sockets on `port` (`tcp`: tcp_sockets_by_inode): the listening ones (by
    inode), and how many of its connections come from the `clients` ports."""
    listening, connected = set(), 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            local_port, remote_port, state = tcp.get(inode, (0, 0, ""))
            if local_port == port and state == "0A":
                listening.add(inode)
            elif local_port == port and state == "01" and remote_port in clients:
                connected += 1
    return listening, connected


def sockets_after_a_burst(args: list[str], tmp_path: Path) -> dict[int, tuple[set[int], int]]:
    """Two workers' listening sockets on the HTTP port (inodes) and how many of a burst of 64
    connections each accepted, every one answered."""
    with ServerProcess(["--model-dir", str(copy_model(tmp_path / "models", MODEL, 1).parent.parent),
                        "--workers", "2", "--no-warmup", *args]) as server:
        assert server.process is not None
        # Ready (ServerProcess waits for it) means every worker's socket listens (app/listeners.py
        # `accepting`): a burst sent before the second joined the kernel's group all went to the
        # first (CI, when readiness counted a worker's models only: 64 and 0).
        workers = wait_for(lambda: len(found := server.worker_pids()) == 2 and found)
        connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(64)]
        try:
            for connection in connections:  # each answered: accepted by a worker
                connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            for connection in connections:
                assert connection.recv(65536).startswith(b"HTTP/1.1 200")
            clients = {connection.getsockname()[1] for connection in connections}
            tcp = tcp_sockets_by_inode()
            return {pid: sockets_of(pid, server.port, clients, tcp) for pid in workers}
        finally:
            for connection in connections:
                connection.close()


def test_a_burst_of_connections_is_spread_across_the_workers(tmp_path: Path) -> None:
    """Each worker listens on a socket of its own (app/listeners.py), so the kernel spreads
    connections by their addresses. On one shared socket the first worker awake accepted
    nearly every connection of a burst (62 and 63 of wrk's 64 in two of six runs)."""
    held = sockets_after_a_burst([], tmp_path)
    listening = [inodes for inodes, _ in held.values()]
    assert all(len(inodes) == 1 for inodes in listening), held
    assert listening[0] != listening[1], held  # each its own
    assert sum(connected for _, connected in held.values()) == 64, held
    assert all(connected >= 16 for _, connected in held.values()), held  # binomial(64, 1/2): < 16 once in 10^5


def test_without_reuse_port_the_workers_share_one_socket(tmp_path: Path) -> None:
    """--no-reuse-port: uvicorn's one socket in every worker, which keeps the connections
    waiting in its queue for the others when a worker dies."""
    held = sockets_after_a_burst(["--no-reuse-port"], tmp_path)
    listening = [inodes for inodes, _ in held.values()]
    assert len(listening[0]) == 1, held
    assert listening[0] == listening[1], held
    assert sum(connected for _, connected in held.values()) == 64, held
