"""TLS on both ports from the same files (the settings' TLS section): the context HTTPS's
connections take (app/http/connections.py), and the files' bytes for gRPC's credentials
(app/grpc/server.py).

Checked before any model loads (`tls_problem`, from app/__main__.py's preflight): a key that
is not the certificate's, a file that is not PEM or cannot be read stops the start with the
file named, where it would otherwise surface as every client's failed handshake.

Renewed in place: certificates are rotated by rewriting their files (cert-manager's Secret
volumes, certbot). New connections get the files' current certificate, looked at again at
most every CHECK_EVERY_S (`RenewedFiles`); files that changed but do not load together are
logged and the previous certificate goes on serving.

Who a client is, under mutual TLS: its certificate's subject, written as RFC 4514 writes a
distinguished name, the same whichever port it called (the access log's `client_cert`).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.processes import file_stamp
from app.settings import Settings

logger = logging.getLogger(__name__)

Made = TypeVar("Made")

CHECK_EVERY_S = 1.0
"""How often, at most, a new connection has the TLS files looked at again (a stat each)."""


@dataclass(frozen=True)
class TlsFiles:
    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    """Mutual TLS where given: the CA whose certificates clients must present."""


def tls_files(settings: Settings) -> TlsFiles | None:
    """The files' bytes; None where TLS is off. OSError where one cannot be read."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file
    return TlsFiles(settings.tls_cert_file.read_bytes(), settings.tls_key_file.read_bytes(),
                    ca.read_bytes() if ca is not None else None)


class TlsError(ValueError):
    """TLS files that cannot serve, with the file and why."""


def tls_problem(settings: Settings) -> str | None:
    """Why the TLS files cannot serve (None where they can, or TLS is off)."""
    try:
        server_context(settings)
    except TlsError as e:
        return str(e)
    return None


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS's context (None where TLS is off): the certificate, and with a client CA the
    demand for a client certificate it signed. TlsError where the files cannot serve."""
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None or key is None:
        return None
    for path, what in ((cert, "tls_cert_file"), (key, "tls_key_file"), (ca, "tls_client_ca_file")):
        if path is not None and not path.is_file():
            raise TlsError(f"{what} {path} is not a file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty passphrase: an encrypted key fails at once, where OpenSSL would otherwise
        # ask for one on the terminal and the start would wait for it.
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"the certificate {cert} and key {key} do not load together ({_reason(e)}): both PEM, the "
                       "key the certificate's and not encrypted (the server has no passphrase to give it)") from e
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"tls_client_ca_file {ca} holds no CA certificate in PEM ({_reason(e)})") from e
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class RenewedFiles:
    """Whether the TLS files have changed since they were last read, looked at when asked but
    no more than every CHECK_EVERY_S. A file is the same while its size, time and inode are
    (a Secret volume swaps a symbolic link: the stat follows it)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.paths = [p for p in (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
                      if p is not None]
        self.clock = clock
        self._seen = self._stamp()
        self._next = clock() + CHECK_EVERY_S

    def _stamp(self) -> tuple[tuple[int, int, int], ...] | None:
        stamps = [file_stamp(path) for path in self.paths]
        return None if None in stamps else tuple(stamps)  # type: ignore[arg-type]  # being replaced: next time

    def changed(self) -> bool:
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + CHECK_EVERY_S
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        return True


class Renewal(Generic[Made]):
    """What one port serves with, made from the TLS files (HTTPS's context, gRPC's certificate
    configuration) and made again when they change. Files that changed but do not make it
    are logged, and the port goes on with what it had."""

    def __init__(self, settings: Settings, make: Callable[[Settings], Made], port: str) -> None:
        self.settings = settings
        self.make = make
        self.port = port
        self._files = RenewedFiles(settings)

    def renewed(self) -> Made | None:
        """What the files make now where they changed since last looked at; None otherwise."""
        if not self._files.changed():
            return None
        try:
            made = self.make(self.settings)
        except (TlsError, OSError) as e:
            logger.error("the TLS files changed but %s: %s goes on with the previous certificate", e, self.port)
            return None
        logger.info("the TLS files changed: new %s connections get the renewed certificate", self.port)
        return made


class HttpsContext:
    """The context HTTPS's new connections take: the files' current certificate."""

    def __init__(self, settings: Settings, context: ssl.SSLContext) -> None:
        self._context = context
        self._renewal = Renewal(settings, server_context, "HTTPS")

    def current(self) -> ssl.SSLContext:
        self._context = self._renewal.renewed() or self._context
        return self._context


def https_context(settings: Settings) -> HttpsContext | None:
    context = server_context(settings)
    return HttpsContext(settings, context) if context is not None else None


def scheme(settings: Settings) -> str:
    return "https" if settings.tls_cert_file is not None else "http"


def _reason(error: Exception) -> str:
    return getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)


# --- who a client is, by its certificate ------------------------------------------------

_RFC_4514_TYPES = {"commonName": "CN", "localityName": "L", "stateOrProvinceName": "ST", "organizationName": "O",
                   "organizationalUnitName": "OU", "countryName": "C", "streetAddress": "STREET",
                   "domainComponent": "DC", "userId": "UID"}
"""The attribute types RFC 4514 names (section 3); others go by the name Python's ssl gives."""


def distinguished_name(certificate: dict[str, Any] | None) -> str | None:
    """A certificate's subject (as ssl's `getpeercert()` gives it) as RFC 4514 writes a
    distinguished name: the last attribute first, `CN=client,O=Example`."""
    if not certificate or not certificate.get("subject"):
        return None
    return ",".join("+".join(f"{_RFC_4514_TYPES.get(kind, kind)}={_escaped(value)}" for kind, value in rdn)
                    for rdn in reversed(certificate["subject"]))


def _escaped(value: str) -> str:
    """RFC 4514, section 2.4: the characters that would end or change the name, a space or
    `#` first, a space last."""
    last = len(value) - 1
    return "".join("\\00" if c == "\0" else f"\\{c}" if c in ',+"\\<>;' or (i == 0 and c in " #") or
                   (i == last and c == " ") else c for i, c in enumerate(value))


def readable_subject(rfc_2253: str) -> str:
    """gRPC core's `x509_subject` (OpenSSL's RFC 2253 form, which writes each byte of a
    character outside ASCII as a `\\XX` escape) as `distinguished_name` writes the same
    subject: those characters as they are, every other escape kept; one client, one name in
    the access log whichever port it called."""
    out, i = bytearray(), 0
    while i < len(rfc_2253):
        pair = rfc_2253[i + 1:i + 3]
        if rfc_2253[i] == "\\" and len(pair) == 2 and all(c in "0123456789ABCDEFabcdef" for c in pair) \
                and int(pair, 16) >= 0x80:
            out.append(int(pair, 16))
            i += 3
        elif rfc_2253[i] == "\\" and i + 1 < len(rfc_2253):  # an escape kept whole
            out += rfc_2253[i:i + 2].encode()
            i += 2
        else:
            out += rfc_2253[i].encode()
            i += 1
    return out.decode("utf-8", "replace")
