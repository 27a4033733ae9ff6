"""ASGI's TLS extension (asgiref's spec, version 0.2): what a connection's TLS handshake
settled, put in each of its requests' scopes as `scope["extensions"]["tls"]`, so that the
app, and any ASGI middleware a user puts in front of it, can tell who called over mutual
TLS (the access log writes `client_cert_name`). uvicorn does not provide it (its issue
745); `GuardedHttpToolsProtocol` (app/http/connections.py) does, once per connection.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

from app.tls import distinguished_name

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The extension's fields for a connection. The client's chain is its certificate alone:
    Python's ssl (before 3.13) gives no more of what the client sent."""
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,  # the spec allows None; the server's own certificate is in its files
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": distinguished_name(ssl_object.getpeercert()) if der else None,
        "client_cert_error": None,  # a certificate that fails verification ends the handshake
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _suite_ids(ssl_object.context).get(cipher[0]) if cipher else None,
    }


@functools.lru_cache(maxsize=8)
def _suite_ids(context: ssl.SSLContext) -> dict[str, int]:
    """The IANA number of each cipher suite the context offers, by OpenSSL's name (its
    `id` is 0x0300 followed by the suite's two bytes)."""
    return {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}
