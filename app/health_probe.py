"""`python -m app.health_probe`: the container's health check. Exit status 0 when the server
in this container is ready (`/v2/health/ready` on its HTTP port), 1 otherwise.

It reads the port and whether the port speaks TLS from the same ORTSERVE_* variables the
server does, so turning TLS on does not turn the container unhealthy (a plain-text check of
a TLS port fails every time, and an orchestrator restarts an unhealthy container). Over TLS
it asks the server's own loopback port, so it checks no certificate name; where the server
asks clients for certificates, it presents the server's own, which a CA that signed both
accepts. No imports beyond the standard library: it runs every few seconds.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

TIMEOUT_S = 2.0


def ready(environ: Mapping[str, str] = os.environ) -> bool:
    port = environ.get("ORTSERVE_PORT", "8000")
    cert, key = environ.get("ORTSERVE_TLS_CERT_FILE"), environ.get("ORTSERVE_TLS_KEY_FILE")
    context = None
    if cert and key:
        context = ssl.create_default_context()
        context.check_hostname = False  # this container's own port, on loopback
        context.verify_mode = ssl.CERT_NONE
        if environ.get("ORTSERVE_TLS_CLIENT_CA_FILE"):
            context.load_cert_chain(cert, key, password=lambda: b"")
    url = f"{'https' if context else 'http'}://127.0.0.1:{port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError, ssl.SSLError):  # refused, not ready (503), TLS refused
        return False


if __name__ == "__main__":
    sys.exit(0 if ready() else 1)
