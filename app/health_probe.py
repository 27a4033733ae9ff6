"""`python -m app.health_probe`: the container's health check. Exit status 0 when the server
in this container is ready (`/v2/health/ready` on its HTTP port), 1 otherwise.

Where to ask comes from the server itself: at start it writes where it listens and whether
that port speaks TLS to a record in the temporary folder (`announce`), so a port, an address
or TLS given as flags (`docker run IMAGE --port 9000`) is checked where it is served. Without
a live server's record (before the server has started, or where the temporary folder is not
writable) it reads the same ORTSERVE_* variables the server does. A plain-text check of a TLS
port fails every time, and an orchestrator restarts an unhealthy container.

Over TLS it asks the server's own port, so it checks no certificate name; where the server
asks clients for certificates, it presents the server's own, which a CA that signed both
accepts. No imports beyond the standard library: it runs every few seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import ssl
import stat
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Target:
    """Where the probe asks, and with what."""

    url: str
    cert_file: str | None = None
    key_file: str | None = None
    client_certificates: bool = False  # the server asks clients for certificates: present its own


def ready(environ: Mapping[str, str] = os.environ, announced: Path | None = None) -> bool:
    """`announced`: the record a server wrote (default: this user's, `record_path()`)."""
    target = read_record(record_path() if announced is None else announced) or from_environment(environ)
    context = None
    if target.cert_file and target.key_file:
        context = ssl.create_default_context()
        context.check_hostname = False  # the server's own port
        context.verify_mode = ssl.CERT_NONE
        if target.client_certificates:
            context.load_cert_chain(target.cert_file, target.key_file, password=lambda: b"")
    try:
        with urllib.request.urlopen(target.url, timeout=TIMEOUT_S, context=context) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError, ssl.SSLError):  # refused, not ready (503), TLS refused
        return False


def from_environment(environ: Mapping[str, str]) -> Target:
    port = environ.get("ORTSERVE_PORT", "8000")
    cert, key = environ.get("ORTSERVE_TLS_CERT_FILE"), environ.get("ORTSERVE_TLS_KEY_FILE")
    tls = bool(cert and key)
    return Target(ready_url("https" if tls else "http", environ.get("ORTSERVE_HOST", ""), port),
                  cert if tls else None, key if tls else None, tls and bool(environ.get("ORTSERVE_TLS_CLIENT_CA_FILE")))


def ready_url(scheme: str, host: str, port: int | str) -> str:
    """Readiness of a server listening on `host`:`port`, as asked from this machine."""
    return f"{scheme}://{local_address(host)}:{port}/v2/health/ready"


def local_address(host: str) -> str:
    """The address this machine reaches a server listening on `host` at: loopback for a
    wildcard, the address itself otherwise."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# --- the server's record of where it listens --------------------------------------------

def record_path() -> Path:
    """One record per user, in the temporary folder (a tmpfs in compose's read-only
    container): the server this container runs. Where one user runs several servers on a
    host, it is the last one started."""
    return Path(tempfile.gettempdir()) / f"ortserve-{os.getuid()}" / "listening.json"


def announce(target: Target, path: Path | None = None) -> bool:
    """Written by the server's first process once it knows its port; removed when that
    process exits. False where it could not be written (the probe then reads the variables)."""
    path = record_path() if path is None else path
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        if not _own_folder(path.parent):
            return False
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps({"pid": os.getpid(), **asdict(target)}))
        os.replace(temporary, path)
    except OSError:
        return False
    atexit.register(_withdraw, path, os.getpid())
    return True


def read_record(path: Path) -> Target | None:
    """The record's target if the process that wrote it is still running, else None."""
    try:
        if not _own_folder(path.parent):
            return None
        fields = json.loads(path.read_text())
        pid = fields.pop("pid")
        os.kill(pid, 0)  # no such process: a server that died without removing its record
        return Target(**fields)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _own_folder(folder: Path) -> bool:
    """Only a folder of this user's that nobody else may write: anyone may write the
    temporary folder, and a record planted there would point the probe elsewhere."""
    found = folder.lstat()
    return (stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid()
            and not found.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _withdraw(path: Path, pid: int) -> None:
    """Remove the record if it is still this process's (a later server may have replaced it)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["pid"] == pid:
            path.unlink()


if __name__ == "__main__":
    sys.exit(0 if ready() else 1)
