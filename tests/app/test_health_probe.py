"""The record a server leaves for the container's health check (app/health_probe.py): read
only while its writer runs, only from a folder of this user's that nobody else may write,
and removed only by the process that wrote it. Against a real server: a port given as a
flag, which the probe's environment does not hold, is the port it checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app import health_probe
from app.health_probe import Target
from load_tests.server import ROOT, ServerProcess
from tests.conftest import MODELS

TARGET = Target("https://127.0.0.1:8443/v2/health/ready", "/srv/cert.pem", "/srv/key.pem", client_certificates=True)


def test_a_record_names_the_server_that_wrote_it_while_it_runs(tmp_path: Path) -> None:
    record = tmp_path / "ortserve" / "listening.json"
    assert health_probe.announce(TARGET, record)
    assert health_probe.read_record(record) == TARGET
    assert oct(record.parent.stat().st_mode & 0o777) == oct(0o700)
    health_probe._withdraw(record, os.getpid())
    assert not record.exists()
    assert health_probe.read_record(record) is None


def test_a_record_whose_writer_is_gone_is_not_read(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    record = tmp_path / "ortserve" / "listening.json"
    record.parent.mkdir(mode=0o700)
    record.write_text(json.dumps({"pid": int(gone.stdout), "url": "http://127.0.0.1:9/v2/health/ready"}))
    assert health_probe.read_record(record) is None


@pytest.mark.parametrize("content", ["not json", "{}", json.dumps({"pid": "1", "url": "x"}),
                                     json.dumps({"pid": os.getpid(), "url": "x", "extra": 1})])
def test_a_record_that_is_not_one_is_not_read(tmp_path: Path, content: str) -> None:
    record = tmp_path / "ortserve" / "listening.json"
    record.parent.mkdir(mode=0o700)
    record.write_text(content)
    assert health_probe.read_record(record) is None


def test_a_folder_others_may_write_or_a_link_holds_no_record(tmp_path: Path) -> None:
    """Anyone may write the temporary folder: a record planted there would send the probe to
    another port, where another program answers 200."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert not health_probe.announce(TARGET, shared / "listening.json")
    (shared / "listening.json").write_text(json.dumps({"pid": os.getpid(), "url": TARGET.url}))
    assert health_probe.read_record(shared / "listening.json") is None

    own = tmp_path / "own"
    assert health_probe.announce(TARGET, own / "listening.json")
    link = tmp_path / "link"
    link.symlink_to(own, target_is_directory=True)
    assert health_probe.read_record(link / "listening.json") is None
    assert health_probe.read_record(own / "listening.json") == TARGET


def test_only_the_process_that_wrote_a_record_removes_it(tmp_path: Path) -> None:
    """Two servers of one user: the first to exit leaves the second's record."""
    record = tmp_path / "ortserve" / "listening.json"
    assert health_probe.announce(TARGET, record)
    health_probe._withdraw(record, os.getpid() + 1)
    assert health_probe.read_record(record) == TARGET


@pytest.mark.parametrize(("host", "seen_at"), [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "[::1]"),
                                               ("10.1.2.3", "10.1.2.3"), ("fd00::5", "[fd00::5]"),
                                               ("localhost", "localhost")])
def test_a_wildcard_address_is_asked_on_loopback_and_any_other_as_itself(host: str, seen_at: str) -> None:
    assert health_probe.local_address(host) == seen_at
    assert health_probe.from_environment({"ORTSERVE_HOST": host, "ORTSERVE_PORT": "9000"}).url == \
        f"http://{seen_at}:9000/v2/health/ready"


@pytest.mark.server
def test_the_probe_checks_the_port_given_as_a_flag(tmp_path: Path) -> None:
    """`docker run IMAGE --port 9000`: the image's ORTSERVE_PORT (8000) is not where it listens."""
    env = {"TMPDIR": str(tmp_path), "ORTSERVE_PORT": "1"}  # nothing listens on port 1

    def probe() -> int:
        return subprocess.run([sys.executable, "-m", "app.health_probe"], cwd=ROOT, env={**os.environ, **env},
                              capture_output=True, timeout=30, check=False).returncode

    record = tmp_path / f"ortserve-{os.getuid()}" / "listening.json"
    with ServerProcess(["--model-dir", str(MODELS), "--workers", "1"], env=env) as server:  # --port as a flag
        assert json.loads(record.read_text())["url"] == f"http://127.0.0.1:{server.port}/v2/health/ready"
        assert probe() == 0
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    assert not record.exists()
    assert probe() == 1
