"""Who a client is under mutual TLS: its certificate's subject written as RFC 4514 writes a
distinguished name, checked against cryptography's own writer (a test dependency; the
server does without it), the same from gRPC core's form, and ASGI's TLS extension over a
real handshake. Both ports' access lines for one client: tests/app/test_tls.py."""

from __future__ import annotations

import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from app.http.tls_scope import tls_extension
from app.tls import distinguished_name, readable_subject

_OIDS = {"commonName": NameOID.COMMON_NAME, "organizationName": NameOID.ORGANIZATION_NAME,
         "organizationalUnitName": NameOID.ORGANIZATIONAL_UNIT_NAME, "countryName": NameOID.COUNTRY_NAME,
         "domainComponent": NameOID.DOMAIN_COMPONENT}


@pytest.mark.parametrize("subject", [
    ((("countryName", "DE"),), (("organizationName", "Example"),), (("commonName", "client@example.org"),)),
    ((("commonName", 'a, "b" + <c>; d\\e=f'),),),
    ((("commonName", "#leading hash"),), (("organizationalUnitName", " leading and trailing space "),)),
    ((("commonName", "a backslash, then a space\\ "),), (("organizationName", " "),)),
    ((("domainComponent", "org"),), (("domainComponent", "example"),),
     (("commonName", "one"), ("organizationalUnitName", "two"))),  # a multi-valued RDN
])
def test_a_subject_is_written_as_rfc_4514_writes_it(subject: tuple[tuple[tuple[str, str], ...], ...]) -> None:
    name = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(_OIDS[kind], value) for kind, value in rdn])
                      for rdn in subject])
    assert distinguished_name({"subject": subject}) == name.rfc4514_string()


def test_no_certificate_no_name() -> None:
    assert distinguished_name(None) is None
    assert distinguished_name({}) is None


def _handshake(server: ssl.SSLObject, client: ssl.SSLObject, server_in: ssl.MemoryBIO, server_out: ssl.MemoryBIO,
               client_in: ssl.MemoryBIO, client_out: ssl.MemoryBIO) -> None:
    """Both sides' handshakes, their bytes passed between memory buffers until both are done."""
    done = {"server": False, "client": False}
    for _ in range(20):
        for side, ours in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    ours.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


@pytest.mark.parametrize("client_certificate", [True, False])
def test_the_extension_of_a_real_handshake(client_certificate: bool) -> None:
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED if client_certificate else ssl.CERT_NONE
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_context)
    issued = ca.issue_cert("client@example.org", common_name="client@example.org")
    if client_certificate:
        issued.configure_cert(client_context)
    buffers = [ssl.MemoryBIO() for _ in range(4)]
    server = server_context.wrap_bio(buffers[0], buffers[1], server_side=True)
    client = client_context.wrap_bio(buffers[2], buffers[3], server_hostname="127.0.0.1")
    _handshake(server, client, *buffers)
    tls = tls_extension(server)
    assert tls["tls_version"] == 0x0304  # TLS 1.3, both sides' default
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)  # TLS 1.3's suites, by their IANA numbers
    assert tls["server_cert"] is None
    assert tls["client_cert_error"] is None
    if client_certificate:
        sent = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
        assert tls["client_cert_name"] == sent.subject.rfc4514_string()
        assert [x509.load_pem_x509_certificate(pem.encode()) for pem in tls["client_cert_chain"]] == [sent]
    else:
        assert tls["client_cert_name"] is None
        assert tls["client_cert_chain"] == []


def test_grpc_cores_subject_reads_as_the_http_ports() -> None:
    """What gRPC core gave for a client whose common name is `café, ünï` (OpenSSL's RFC 2253
    form: each byte outside ASCII an escape), and the same subject from Python's ssl."""
    from_grpc = "CN=caf\\C3\\A9\\, \\C3\\BCn\\C3\\AF,OU=Testing cert #1,O=trustme v1.2.1"
    subject = ((("organizationName", "trustme v1.2.1"),), (("organizationalUnitName", "Testing cert #1"),),
               (("commonName", "café, ünï"),))
    assert readable_subject(from_grpc) == distinguished_name({"subject": subject}) == \
        "CN=café\\, ünï,OU=Testing cert #1,O=trustme v1.2.1"
    assert readable_subject("CN=a\\\\C3,O=\\#x\\0A") == "CN=a\\\\C3,O=\\#x\\0A"  # escapes of ASCII kept
