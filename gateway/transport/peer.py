"""The TLS side of a connection to a peer, shared by the SMTP client and `mailward tls probe`:
the client contexts (TLS 1.2 or later, system roots plus an admin's CA file; one that verifies,
one that accepts any certificate for opportunistic TLS) and the certificate chain the peer sent,
which DANE checks."""

from __future__ import annotations

import ssl


def tls_contexts(ca_file: str | None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(verifying, accepting any certificate): TLS 1.2 or later; system roots plus `ca_file`."""
    verifying = ssl.create_default_context()
    verifying.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        verifying.load_verify_locations(cafile=ca_file)
    any_certificate = ssl.create_default_context()
    any_certificate.check_hostname = False
    any_certificate.verify_mode = ssl.CERT_NONE
    return verifying, any_certificate


def peer_chain(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    """The certificates the server sent, DER, its own first. Python 3.13 has a public method;
    3.11 and 3.12 have the same one on the internal object; without either, the server's own
    certificate only (enough for DANE-EE)."""
    if ssl_object is None:
        return []
    chain_of = getattr(ssl_object, "get_unverified_chain", None) or \
        getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if chain_of is not None:
        chain = chain_of() or []
        return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                for c in chain]
    own = ssl_object.getpeercert(binary_form=True)
    return [own] if own else []
