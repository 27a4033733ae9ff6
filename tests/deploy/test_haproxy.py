"""deploy/haproxy/haproxy.cfg's routing, with the real HAProxy (Debian's; .ci/run installs it)
in front of two real servers on this machine: the shipped file with its two frontends bound to
loopback ports and its replicas named as those servers (the container check,
deploy/replicas_check.sh, runs it as shipped, with DNS). A stateful model's sequence lives in
one replica, so each of its steps must reach that one, whichever connection carries it: the
sequences backend hashes the request's sequence_id, read from its JSON (alone, or before
Triton's binary tensors), or over gRPC, from the `sequence-id` header a unary call carries
(a stream stays on one replica as any stream does); every other request is balanced as before."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from load_tests.sequences import ACCUMULATOR_CONFIG, accumulator
from load_tests.server import ServerProcess, free_port
from load_tests.stats import sample_total
from tests.app.onnx_models import save
from tests.conftest import ROOT

HAPROXY = shutil.which("haproxy")
MODEL = "accumulator"


def local_config(shipped: str, http_port: int, grpc_port: int, replicas: list[tuple[int, int]]) -> str:
    """The shipped configuration, its frontends on loopback ports and each `server-template`
    (16 slots filled from DNS) replaced by the given replicas' (HTTP, gRPC) ports."""
    config = shipped.replace("bind :8000", f"bind 127.0.0.1:{http_port}")
    config = config.replace("bind :8001", f"bind 127.0.0.1:{grpc_port}")
    config = re.sub(r" resolvers compose init-addr none resolve-prefer ipv4", "", config)

    def servers(match: re.Match[str]) -> str:
        port_of = 0 if match.group(1) == "8000" else 1
        return "\n".join(f"  server replica{n} 127.0.0.1:{ports[port_of]}{match.group(2)}"
                         for n, ports in enumerate(replicas))
    config = re.sub(r"  server-template replica 16 ortserve:(8000|8001)(.*)", servers, config)
    assert "ortserve:" not in config  # every replica slot replaced
    return config


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, list[ServerProcess]]]:
    """(the load balancer's URL, its gRPC address, its two replicas), each replica one worker
    serving the accumulator."""
    if HAPROXY is None:
        pytest.skip("needs haproxy (apt-get install haproxy; CI installs it)")
    home = tmp_path_factory.mktemp("models")
    save(home, MODEL, accumulator())
    (home / MODEL / "config.pbtxt").write_text(ACCUMULATOR_CONFIG)
    with ServerProcess(["--model-dir", str(home), "--workers", "1"]) as first, \
            ServerProcess(["--model-dir", str(home), "--workers", "1"]) as second:
        port, grpc_port = free_port(), free_port()
        config = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
        config.write_text(local_config((ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text(), port, grpc_port,
                                       [(first.port, first.grpc_port), (second.port, second.grpc_port)]))
        checked = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        log = (config.parent / "haproxy.log").open("wb")  # a file, not a pipe nobody reads
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):  # both replicas checked ready (HAProxy checks every second)
                if _ready(url):
                    break
                time.sleep(0.2)
            yield url, f"127.0.0.1:{grpc_port}", [first, second]
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()


def _ready(url: str) -> bool:
    """The balancer answers ready, eight times in a row (both replicas up, whichever it picks)."""
    try:
        return all(httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200 for _ in range(8))
    except httpx.HTTPError:
        return False


def _steps(server: ServerProcess) -> int:
    stats = httpx.get(f"{server.url}/v2/models/{MODEL}/stats", timeout=30).json()["model_stats"][0]
    return int(stats["inference_count"])


def _json_step(url: str, sequence_id: int | str, x: float, **flags: bool) -> float:
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [x]}],
            "parameters": {"sequence_id": sequence_id, **flags}}  # after the inputs, as tritonclient sends them
    answer = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30)  # a new connection each step
    assert answer.status_code == 200, answer.text
    return float(next(o for o in answer.json()["outputs"] if o["name"] == "total")["data"][0])


def _binary_step(url: str, sequence_id: int | str, x: float, **flags: bool) -> float:
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(url.removeprefix("http://"))  # a new connection each step
    given = triton_http.InferInput("x", [1, 1], "FP32")
    given.set_data_from_numpy(np.array([[x]], dtype=np.float32), binary_data=True)
    try:
        answer = client.infer(MODEL, [given], sequence_id=sequence_id, sequence_start=flags.get("sequence_start", False),
                              sequence_end=flags.get("sequence_end", False))
    finally:
        client.close()
    return float(answer.as_numpy("total")[0, 0])


def test_each_sequences_steps_reach_one_replica_over_new_connections(
        balanced: tuple[str, str, list[ServerProcess]]) -> None:
    url, _, replicas = balanced
    before = [_steps(r) for r in replicas]
    totals = {}
    for sequence_id, send in [(101, _json_step), (102, _json_step), (103, _json_step), (104, _json_step),
                              (201, _binary_step), (202, _binary_step), (203, _binary_step), (204, _binary_step)]:
        seen = [send(url, sequence_id, 1.0, sequence_start=True)]
        seen += [send(url, sequence_id, 1.0, sequence_end=k == 5) for k in range(1, 6)]
        totals[sequence_id] = seen
    ran = [_steps(r) - b for r, b in zip(replicas, before, strict=True)]
    assert all(seen == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] for seen in totals.values()), totals
    assert sum(ran) == 8 * 6
    assert min(ran) > 0  # the sequences were spread over both replicas (hashed: 8 IDs on one has odds of 1 in 128)


def test_requests_without_a_sequence_are_balanced_over_both_replicas(
        balanced: tuple[str, str, list[ServerProcess]]) -> None:
    url, _, replicas = balanced
    before = [_requests_refused(r) for r in replicas]

    async def at_once() -> list[int]:  # 32 in flight: least-connections spreads them
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
            answers = await asyncio.gather(*(client.post(f"{url}/v2/models/{MODEL}/infer", json={
                "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}) for _ in range(32)))
        return [a.status_code for a in answers]
    # the accumulator refuses a request without a sequence_id (400): where each went shows in
    # the replicas' own counts
    assert set(asyncio.run(at_once())) == {400}
    refused = [_requests_refused(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(refused) == 32
    assert min(refused) > 0  # not hashed onto one replica


def test_a_grpc_sequence_reaches_one_replica_on_a_stream_or_by_its_header(
        balanced: tuple[str, str, list[ServerProcess]]) -> None:
    import queue

    import tritonclient.grpc as triton_grpc

    _, target, replicas = balanced
    before = [_steps(r) for r in replicas]

    def given(x: float) -> list[triton_grpc.InferInput]:
        tensor = triton_grpc.InferInput("x", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[x]], dtype=np.float32))
        return [tensor]

    def over_a_stream(sequence_id: int) -> list[float]:
        client = triton_grpc.InferenceServerClient(target)
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for k in range(6):
                client.async_stream_infer(MODEL, given(1.0), sequence_id=sequence_id, sequence_start=k == 0,
                                          sequence_end=k == 5)
            got = [answers.get(timeout=30) for _ in range(6)]
        finally:
            client.stop_stream()
            client.close()
        assert all(error is None for _, error in got), got
        return [float(result.as_numpy("total")[0, 0]) for result, _ in got]  # type: ignore[attr-defined]

    def unary_with_its_header(sequence_id: int) -> list[float]:
        totals = []
        for k in range(6):
            client = triton_grpc.InferenceServerClient(target)  # a new connection each call
            try:
                answer = client.infer(MODEL, given(1.0), sequence_id=sequence_id, sequence_start=k == 0,
                                      sequence_end=k == 5, headers={"sequence-id": str(sequence_id)})
            finally:
                client.close()
            totals.append(float(answer.as_numpy("total")[0, 0]))
        return totals

    streamed = {n: over_a_stream(n) for n in (301, 302, 303, 304)}
    unary = {n: unary_with_its_header(n) for n in (401, 402, 403, 404, 405, 406)}
    ran = [_steps(r) - b for r, b in zip(replicas, before, strict=True)]
    assert all(seen == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] for seen in [*streamed.values(), *unary.values()]), \
        (streamed, unary)
    assert sum(ran) == 10 * 6
    assert min(ran) > 0


def _requests_refused(server: ServerProcess) -> float:
    return sample_total(server.metrics(), "ortserve_requests_total", model=MODEL, status="400")


def test_the_shipped_file_is_what_the_test_ran() -> None:
    """The local configuration differs from the shipped one only in addresses: its binds, and
    each replica slot named as a server."""
    shipped = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    local = local_config(shipped, 1, 2, [(3, 4)])

    def rest(text: str) -> list[str]:
        return [re.sub(r" resolvers compose init-addr none resolve-prefer ipv4", "", line) for line in text.splitlines()
                if not re.match(r"  (bind |server-template |server replica)", line)]
    assert rest(local) == rest(shipped)
    assert "use_backend ortserve-sequences if { var(txn.sequence) -m found }" in local
    assert local.count("server replica0") == 4  # HTTP, its sequences, gRPC, its sequences
