"""TLS on both ports from one certificate, and mutual TLS, against a real `python -m app`,
through the clients users bring (httpx, tritonclient.grpc, gRPC's health checking); and TLS
files that cannot serve refused before any model loads. Certificates are trustme's: a CA made
for the test, never a file from the repository."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app import health_probe
from load_tests import perf_analyzer, perf_inputs
from load_tests.server import ROOT, ServerProcess
from tests.app.conftest import sample_images
from tests.app.http.test_connections import closed_by_server, read_all
from tests.app.http.test_hardening import live_server
from tests.conftest import MODELS

pytestmark = pytest.mark.server


class Certificates:
    """A CA, the server's certificate for 127.0.0.1 and localhost, a client's certificate from
    the same CA and one from a CA the server does not know, as PEM files in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.ca, stranger = trustme.CA(), trustme.CA()
        served = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert, self.key, self.ca_file = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
        for i, blob in enumerate(served.cert_chain_pems):
            blob.write_to_path(str(self.cert), append=i > 0)
        served.private_key_pem.write_to_path(str(self.key))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.encrypted_key = folder / "encrypted.key"  # the same key under a passphrase
        self.encrypted_key.write_bytes(serialization.load_pem_private_key(served.private_key_pem.bytes(), None)
                                       .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.BestAvailableEncryption(b"secret")))
        # a common name outside ASCII: gRPC core and Python's ssl write it differently
        self.client = self._write(self.ca.issue_cert("client@example.org", common_name="clïent, é"),
                                  folder / "client")
        self.stranger = self._write(stranger.issue_cert("stranger@example.org"), folder / "stranger")

    @staticmethod
    def _write(issued: trustme.LeafCert, stem: Path) -> tuple[Path, Path]:
        cert, key = stem.with_suffix(".pem"), stem.with_suffix(".key")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def context(self, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """What a client verifies the server with (and presents, where given)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if client is not None:
            context.load_cert_chain(*client)
        return context


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


def tls_server(certificates: Certificates, *args: str, client: tuple[Path, Path] | None = None) -> ServerProcess:
    def ready(server: ServerProcess) -> bool:
        try:
            return httpx.get(https(server) + "/v2/health/ready", verify=certificates.context(client)).status_code == 200
        except httpx.HTTPError:
            return False

    return ServerProcess(["--model-dir", str(MODELS), "--log-level", "info", "--tls-cert-file", str(certificates.cert),
                          "--tls-key-file", str(certificates.key), *args], ready=ready)


def https(server: ServerProcess) -> str:
    return server.url.replace("http://", "https://")


def v2_json(images: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "pixels", "shape": list(images.shape), "datatype": "FP32",
                        "data": images.ravel().tolist()}]}


def grpc_client(server: ServerProcess, certificates: Certificates,
                client: tuple[Path, Path] | None = None) -> triton_grpc.InferenceServerClient:
    # The certificate names 127.0.0.1, which gRPC checks against the target's host.
    kw = {"certificate_chain": str(client[0]), "private_key": str(client[1])} if client else {}
    return triton_grpc.InferenceServerClient(server.grpc_target, ssl=True, root_certificates=str(certificates.ca_file),
                                             **kw)


def grpc_infer(client: triton_grpc.InferenceServerClient, images: np.ndarray) -> np.ndarray:
    tensor = triton_grpc.InferInput("pixels", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    answer = client.infer("fashion-cnn", [tensor])
    return answer.as_numpy(answer.get_response().outputs[0].name)


@pytest.fixture(scope="module")
def tls(certificates: Certificates) -> Iterator[ServerProcess]:
    with tls_server(certificates, "--workers", "2") as running:  # each worker's own socket, over TLS
        yield running


def test_https_and_grpc_over_tls_answer_alike_and_plain_text_is_refused(
        tls: ServerProcess, certificates: Certificates) -> None:
    images = (sample_images(3) / 255).astype(np.float32).reshape(3, 1, 28, 28)
    over_https = httpx.post(https(tls) + "/v2/models/fashion-cnn/infer", json=v2_json(images),
                            verify=certificates.context())
    assert over_https.status_code == 200, over_https.text
    logits = np.array(over_https.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, -1)
    client = grpc_client(tls, certificates)
    np.testing.assert_allclose(grpc_infer(client, images), logits, rtol=1e-5, atol=1e-5)
    with grpc.secure_channel(tls.grpc_target, grpc.ssl_channel_credentials(certificates.ca_file.read_bytes())) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port: no answer
        httpx.get(tls.url + "/v2/health/ready", timeout=10)
    with pytest.raises(httpx.HTTPError):  # a certificate the client does not trust
        httpx.get(https(tls) + "/v2/health/ready", timeout=10)
    with grpc.insecure_channel(tls.grpc_target) as channel, pytest.raises(grpc.RpcError) as plain:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"listening on https://127.0.0.1:{tls.port}" in tls.log.read_text()  # the workers' parent says so


def test_the_containers_health_probe_speaks_what_the_port_speaks(tls: ServerProcess, certificates: Certificates,
                                                                 server: ServerProcess, tmp_path: Path) -> None:
    """app/health_probe.py (the image's HEALTHCHECK), with no server's record to read, reads the
    same variables as the server."""
    none = tmp_path / "no-record.json"
    over_tls = {"ORTSERVE_PORT": str(tls.port), "ORTSERVE_TLS_CERT_FILE": str(certificates.cert),
                "ORTSERVE_TLS_KEY_FILE": str(certificates.key)}
    assert health_probe.ready(over_tls, none)
    assert not health_probe.ready({"ORTSERVE_PORT": str(tls.port)}, none)  # plain text to a TLS port: refused
    assert health_probe.ready({"ORTSERVE_PORT": str(server.port)}, none)  # a plain server
    probe = subprocess.run([sys.executable, "-m", "app.health_probe"], cwd=ROOT,
                           env={**os.environ, **over_tls, "TMPDIR": str(tmp_path)},  # no record there
                           capture_output=True, text=True, timeout=30, check=False)
    assert probe.returncode == 0, probe.stderr


def test_the_health_probe_finds_tls_and_a_port_given_as_flags(certificates: Certificates, tmp_path: Path) -> None:
    """`docker run IMAGE --tls-cert-file ... --port 0`: nothing of it in the probe's environment;
    the server's record says where it listens (the port the kernel chose, with workers) and
    that it asks for client certificates, which the probe then presents."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORTSERVE_")}
    env["TMPDIR"] = str(tmp_path)
    command = [sys.executable, "-m", "app", "--model-dir", str(MODELS), "--host", "127.0.0.1", "--port", "0",
               "--no-grpc", "--workers", "2", "--tls-cert-file", str(certificates.cert), "--tls-key-file",
               str(certificates.key), "--tls-client-ca-file", str(certificates.ca_file)]
    record = tmp_path / f"ortserve-{os.getuid()}" / "listening.json"

    def probe() -> int:
        return subprocess.run([sys.executable, "-m", "app.health_probe"], cwd=tmp_path,  # paths in the record are whole
                              env={**env, "ORTSERVE_PORT": "1"}, capture_output=True, timeout=30, check=False).returncode

    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _served_until(lambda: probe() == 0, seconds=90), (tmp_path / "server.log").read_text()
        announced = json.loads(record.read_text())
        assert announced["pid"] == server.pid
        assert announced["client_certificates"] is True
        port = int(announced["url"].split(":")[2].split("/")[0])
        assert port != 0
        answer = httpx.get(f"https://127.0.0.1:{port}/v2/health/ready", timeout=10,
                           verify=certificates.context(certificates.client))
        assert answer.status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    assert not record.exists()  # withdrawn at exit
    assert probe() == 1  # and nothing answers on the port the variables name


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_over_tls_with_its_own_options(tls: ServerProcess, certificates: Certificates,
                                                           protocol: str, perf_analyzer_tool: str) -> None:
    """Triton's load tester, unchanged: its --ssl-* options and the CA, an https:// URL for HTTP."""
    folder, seen_as = perf_analyzer.input_folder(perf_analyzer_tool)
    folder.mkdir(parents=True, exist_ok=True)  # the tool reads files inside its own root
    shutil.copy(certificates.ca_file, folder / "tls-ca.pem")
    data = perf_inputs.write(MODELS, folder, 8)["fashion-cnn"].name
    if protocol == "http":
        where = ["-u", f"https://127.0.0.1:{tls.port}", "--ssl-https-ca-certificates-file", f"{seen_as}/tls-ca.pem"]
    else:
        where = ["-u", tls.grpc_target, "--ssl-grpc-use-ssl", "true",
                 "--ssl-grpc-root-certifications-file", f"{seen_as}/tls-ca.pem"]
    done = subprocess.run([perf_analyzer_tool, "-m", "fashion-cnn", "-i", protocol, *where, "--concurrency-range", "4",
                           "--input-data", f"{seen_as}/{data}", *perf_analyzer.QUICK_CHECK],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert perf_analyzer.figures(done.stdout)["infer_per_s"] > 0, done.stdout
    assert "error" not in done.stdout.lower(), done.stdout


def test_mutual_tls_serves_only_clients_whose_certificate_the_ca_signed(certificates: Certificates) -> None:
    images = (sample_images(1) / 255).astype(np.float32).reshape(1, 1, 28, 28)
    with tls_server(certificates, "--workers", "1", "--tls-client-ca-file", str(certificates.ca_file),
                    "--access-log", client=certificates.client) as server:
        signed = httpx.post(https(server) + "/v2/models/fashion-cnn/infer", json=v2_json(images),
                            verify=certificates.context(certificates.client))
        refused = []
        for client in (None, certificates.stranger):
            try:
                httpx.get(https(server) + "/v2/health/ready", verify=certificates.context(client), timeout=10)
            except httpx.HTTPError as e:
                refused.append(type(e).__name__)
        over_grpc = grpc_infer(grpc_client(server, certificates, certificates.client), images)
        probe_ready = health_probe.ready({"ORTSERVE_PORT": str(server.port), "ORTSERVE_TLS_CERT_FILE": str(certificates.cert),
                                          "ORTSERVE_TLS_KEY_FILE": str(certificates.key),
                                          "ORTSERVE_TLS_CLIENT_CA_FILE": str(certificates.ca_file)},
                                         certificates.cert.parent / "no-record.json")  # the variables' way
        grpc_refused = []
        for client in (None, certificates.stranger):
            try:
                grpc_client(server, certificates, client).is_server_live(client_timeout=10)
            except Exception as e:  # tritonclient's InferenceServerException
                grpc_refused.append(str(e))
    assert signed.status_code == 200, signed.text
    assert "Uvicorn running on https://" in server.log.read_text()  # TLS is the server's, not uvicorn's
    assert probe_ready  # the health probe presents the server's certificate, which the same CA signed
    np.testing.assert_allclose(over_grpc.ravel(), signed.json()["outputs"][0]["data"], rtol=1e-5, atol=1e-5)
    assert len(refused) == 2  # no certificate, and one another CA signed
    assert len(grpc_refused) == 2
    assert all("UNAVAILABLE" in e for e in grpc_refused), grpc_refused
    # who called, in the access log's lines of both transports: the certificate's subject
    subject = x509.load_pem_x509_certificate(certificates.client[0].read_bytes()).subject.rfc4514_string()
    lines = [line for line in server.log.read_text().splitlines() if "ortserve.access" in line and "status=" in line]
    said = f"client_cert={json.dumps(subject)}"  # quoted: trustme's organization has a space
    assert any("route=/v2/models/{name}/infer" in line and said in line for line in lines), lines
    assert any("method=grpc route=ModelInfer" in line and said in line for line in lines), lines


def _replace(path: Path, blob: trustme.Blob) -> None:
    """As a renewal writes a file: whole, then moved over the old one."""
    new = path.with_suffix(".new")
    blob.write_to_path(str(new))
    os.replace(new, path)


def _served_until(attempt: Callable[[], bool], seconds: float = 30) -> bool:
    """Whether `attempt` succeeds within `seconds`, tried every 0.2 s: the files are looked at
    again at most every second, and only as a connection arrives."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if attempt():
            return True
        time.sleep(0.2)
    return False


def test_a_certificate_renewed_in_place_is_served_without_a_restart(tmp_path: Path) -> None:
    """cert-manager and certbot rewrite the files: new connections, HTTPS and gRPC, get the new
    certificate; files that changed but do not load together leave the old one serving."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old, new = old_ca.issue_cert("127.0.0.1"), new_ca.issue_cert("127.0.0.1")
    _replace(cert, old.cert_chain_pems[0])
    _replace(key, old.private_key_pem)
    trusts = {}
    for name, ca in (("old", old_ca), ("new", new_ca)):
        trusts[name] = tmp_path / f"{name}-ca.pem"
        ca.cert_pem.write_to_path(str(trusts[name]))

    def https_ok(server: ServerProcess, trusted: str) -> bool:
        try:
            return httpx.get(https(server) + "/v2/health/live", timeout=10,
                             verify=ssl.create_default_context(cafile=str(trusts[trusted]))).status_code == 200
        except httpx.HTTPError:
            return False

    def grpc_ok(server: ServerProcess, trusted: str) -> bool:
        with grpc.secure_channel(server.grpc_target, grpc.ssl_channel_credentials(trusts[trusted].read_bytes())) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            except grpc.RpcError:
                return False
            return True

    with ServerProcess(["--model-dir", str(MODELS), "--workers", "1", "--log-level", "info", "--tls-cert-file",
                        str(cert), "--tls-key-file", str(key)], ready=lambda server: https_ok(server, "old")) as server:
        before = grpc_ok(server, "old")
        _replace(key, new.private_key_pem)  # half a renewal: the key of a certificate not yet written
        logged = _served_until(lambda: https_ok(server, "old") and grpc_ok(server, "old") and server.log.read_text()
                               .count("the TLS files changed but") >= 2)
        _replace(cert, new.cert_chain_pems[0])
        renewed_https = _served_until(lambda: https_ok(server, "new"))
        renewed_grpc = _served_until(lambda: grpc_ok(server, "new"))
        old_refused = not https_ok(server, "old") and not grpc_ok(server, "old")
    assert before
    assert logged, server.log.read_text()[-2000:]  # both ports went on with the old certificate, and said why
    assert renewed_https
    assert renewed_grpc
    assert old_refused


async def test_tls_handshakes_count_toward_max_connections_and_end_at_header_timeout_s(
        certificates: Certificates) -> None:
    """A connection that never starts its handshake (uvicorn's own TLS gave it uvloop's 60 s,
    uncounted): closed after header_timeout_s, and counted meanwhile, an idle connection that
    makes room for a client that does speak TLS."""
    tls = {"tls_cert_file": certificates.cert, "tls_key_file": certificates.key}

    async def live(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return await read_all(reader)

    async with live_server(**tls, header_timeout_s=1) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        silent_closed = await closed_by_server(reader)  # within read_all's 20 s, not uvloop's 60
        writer.close()
    async with live_server(**tls, max_connections=10, header_timeout_s=60, keep_alive_s=60) as (server, _):
        port = server.config.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]  # no handshake, ever
        answers = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=certificates.context())
            answers.append(await live(reader, writer))
            writer.close()
        open_now = len(server.server_state.connections)
        for _, w in held:
            w.close()
    assert silent_closed
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:40] for a in answers]
    assert open_now <= 10


def test_tls_files_that_cannot_serve_stop_the_start_with_why(certificates: Certificates, tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    other_key = certificates.stranger[1]
    cases = [
        (["--tls-cert-file", str(certificates.cert)], "tls_cert_file and tls_key_file go together"),
        (["--tls-cert-file", str(certificates.cert), "--tls-key-file", str(other_key)],
         f"the certificate {certificates.cert} and key {other_key} do not load together"),
        (["--tls-cert-file", str(not_pem), "--tls-key-file", str(certificates.key)], "do not load together"),
        (["--tls-cert-file", str(certificates.cert), "--tls-key-file", str(certificates.encrypted_key)],
         "not encrypted (the server has no passphrase to give it)"),
        (["--tls-cert-file", str(tmp_path / "absent.pem"), "--tls-key-file", str(certificates.key)],
         "is not a file"),
        (["--tls-cert-file", str(certificates.cert), "--tls-key-file", str(certificates.key),
          "--tls-client-ca-file", str(not_pem)], f"tls_client_ca_file {not_pem} holds no CA certificate"),
        (["--tls-client-ca-file", str(certificates.ca_file)], "give tls_cert_file and tls_key_file too"),
    ]
    for args, why in cases:
        started = subprocess.run([sys.executable, "-m", "app", "--model-dir", str(MODELS), "--port", "0", *args],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert started.returncode == 2, (args, started.stderr[-500:])
        assert why in started.stderr, (args, started.stderr[-500:])
