"""DKIM signatures (RFC 6376) with rsa-sha256 and ed25519-sha256 (RFC 8463): keys and signing.

dkimpy does what it does well, canonicalisation (relaxed/relaxed), header selection and the
folding of the DKIM-Signature field; the signature itself is made by OpenSSL through
`cryptography`, because dkimpy's RSA in pure Python costs milliseconds per message. Several keys
(dual signing: one RSA and one Ed25519) sign the same message at once and share the body hash.

Which domain signs, and when, is decided by the caller (`gateway.delivery.signing`); this module
has no policy.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

from gateway.errors import KeyFileError
from gateway.keyfiles import read_secret

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
MIN_RSA_BITS = 2048  # RFC 8301 allows 1024; receivers and we want 2048 and up

# Signed once per occurrence when present: what a reader sees and what steers replies and lists.
SIGNED = ("cc", "reply-to", "in-reply-to", "references", "sender", "content-transfer-encoding",
          "list-id", "list-unsubscribe", "list-unsubscribe-post", "auto-submitted", "feedback-id")
# Signed one time more than they occur ("oversigned"), so none can be added after signing: a
# second From or Subject, or a To that was not there, breaks the signature.
OVERSIGNED = ("from", "to", "subject", "date", "message-id", "mime-version", "content-type")

_SIGNED = tuple(name.encode("ascii") for name in SIGNED)
_OVERSIGNED = tuple(name.encode("ascii") for name in OVERSIGNED)
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# Searches over a whole message, written so that the regular expression engine looks for their
# first byte with memchr (a pattern that starts with a literal): three times the speed of
# `bytes.__contains__` with a two-byte needle and of the pattern above, whose lookbehind comes
# first. Together a sixth of the Python time of a signature.
_BARE_LF_SEARCH = re.compile(rb"\n(?<!\r\n)")
_TWO_SPACES = re.compile(b"  ")
_SPACE_AT_END = re.compile(b" \r\n")
_WSP_RUN = re.compile(rb"[\t ]+")
_HEADER_END = b"\r\n\r\n"
_B_LINE = 70  # base64 characters of the signature per folded line (with the space: 71 < 78)
_VISIBLE = bytes(range(0x21, 0x7F))  # what a field name is made of (RFC 5322 ftext, and ":")


class DkimKeyError(ValueError):
    """A key file that is missing, unreadable, of the wrong type or too weak."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: Algorithm
    private_key: PrivateKey

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign the SHA-256 digest of the canonical header data (RFC 8463 §3 for Ed25519, which
        signs the digest itself rather than the data)."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self.private_key.sign(digest)


def load_key(path: Path, algorithm: Algorithm) -> PrivateKey:
    """The private key in `path` (PEM, 0600), checked against the configured algorithm."""
    try:
        pem = read_secret(path)
    except KeyFileError as exc:  # it says what to do (mode, missing file)
        raise DkimKeyError(str(exc)) from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DkimKeyError(f"{path}: not a PEM private key without a passphrase ({exc})") from None
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimKeyError(f"{path}: algorithm rsa-sha256 needs an RSA key")
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"{path}: RSA key of {key.key_size} bits; use {MIN_RSA_BITS} or more "
                               f"(mailward keygen dkim)")
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"{path}: algorithm ed25519-sha256 needs an Ed25519 key")
    return key


def generate_key(algorithm: Algorithm, bits: int = MIN_RSA_BITS) -> PrivateKey:
    if algorithm == "rsa-sha256":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return ed25519.Ed25519PrivateKey.generate()


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_data(key: PrivateKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    """The p= value: base64 of the SubjectPublicKeyInfo (RSA) or of the raw 32 bytes (Ed25519)."""
    public = key.public_key() if isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)) else key
    if isinstance(public, rsa.RSAPublicKey):
        raw = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def txt_record(key: PrivateKey) -> str:
    """The TXT record to publish at ``SELECTOR._domainkey.DOMAIN``."""
    kind = "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ed25519"
    return f"v=DKIM1; k={kind}; p={public_key_data(key)}"


def crlf(content: bytes) -> bytes:
    """CRLF line ends throughout, as the SMTP client sends them; what is signed is what is sent."""
    if _BARE_LF_SEARCH.search(content) is None:
        return content
    return _BARE_LF.sub(b"\r\n", content)


def relaxed_body(body: bytes) -> bytes | memoryview:
    """The relaxed canonical body (RFC 6376 §3.4.4). Most bodies have no whitespace to fold (no
    tab, no run of spaces, no space before a line end): for them only the trailing empty lines
    change, done here without a copy (dkimpy's passes over the whole body were the larger part
    of signing a message with Ed25519)."""
    if b"\t" in body or _TWO_SPACES.search(body) or _SPACE_AT_END.search(body):
        return bytes(_RELAXED.canonicalize_body(body))
    # dkimpy's strip_trailing_lines and correct_empty_body: one CRLF at the end, none for a body
    # that is only line ends.
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    if end == len(body):
        return body + b"\r\n" if body else b""
    return memoryview(body)[:end + 2] if end else b""


def signed_headers(headers: Sequence[tuple[bytes, bytes]]) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """The h= list (each signed field once per occurrence, the oversigned ones once more) and the
    (lowercase name, raw value) of the fields it selects, each name taken from the bottom up
    (RFC 6376 §5.4.2; the extra name of an oversigned field selects nothing)."""
    include, picks = _selection(tuple(name for name, _ in headers))
    return list(include), [(name, headers[index][1]) for name, index in picks]


@functools.lru_cache(maxsize=1024)
def _selection(names: tuple[bytes, ...]) -> tuple[tuple[bytes, ...], tuple[tuple[bytes, int], ...]]:
    """`signed_headers` for a sequence of field names: the h= list and (name, position) of each
    field it selects. Mail from one source has the same fields in the same order, so this is
    worked out once per such sequence, not per message."""
    positions: dict[bytes, list[int]] = {}
    for index, name in enumerate(names):
        positions.setdefault(name.lower().rstrip(), []).append(index)
    include: list[bytes] = []
    picks: list[tuple[bytes, int]] = []
    for name in _OVERSIGNED:
        found = positions.get(name, ())
        include += [name] * (len(found) + 1)
        picks += [(name, index) for index in reversed(found)]
    for name in _SIGNED:
        found = positions.get(name, ())
        if found:
            include += [name] * len(found)
            picks += [(name, index) for index in reversed(found)]
    return tuple(include), tuple(picks)


def sign(content: bytes, keys: Sequence[SigningKey], *, now: float | None = None) -> bytes:
    """DKIM-Signature fields (one per key, CRLF-terminated) for `content` (CRLF line ends).
    Raises dkim.MessageFormatError for a header block that is not RFC 5322."""
    end = content.find(_HEADER_END)
    head, body = (content, b"") if end < 0 else (content[:end + 2], content[end + 4:])
    include, selected = signed_headers(header_fields(head))
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    # The signed fields, canonical, hashed first for every key: computed once per message.
    signed_fields = b"".join(name + b":" + relaxed_header(value) for name, value in selected)
    timestamp = str(int(time.time() if now is None else now)).encode("ascii")
    fields_out = []
    for key in keys:
        tags = (b"v=1", b"a=" + key.algorithm.encode("ascii"), b"c=relaxed/relaxed",
                b"d=" + key.domain.encode("ascii"), b"s=" + key.selector.encode("ascii"),
                b"t=" + timestamp, b"h=" + b" : ".join(include), b"bh=" + body_hash)
        fields_out.append(_signature_field(key, tags, signed_fields))
    return b"".join(fields_out)


def header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, raw value) of each field of a header block (CRLF line ends, ending in CRLF), as
    dkimpy's `rfc822_parse` reads it: a name of visible characters up to the first colon, folded
    lines joined (with their CRLF) to their field, an mbox "From " line skipped; anything else
    raises dkim.MessageFormatError. One split and a translate per line instead of a regular
    expression per line: a quarter of the Python time of a signature went there."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise dkim.MessageFormatError("header block starts with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
            continue
        colon = line.find(b":")
        name = line[:colon]
        if colon > 0 and not name.translate(None, _VISIBLE):
            fields.append((name, line[colon + 1:]))
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line[:80]!r}")
    return fields


def relaxed_header(value: bytes) -> bytes:
    """A field value in relaxed canonical form (RFC 6376 §3.4.2), CRLF-terminated: unfolded,
    runs of WSP made one space, no WSP at either end. The same as dkimpy's, with the patterns
    compiled once, and skipped for the usual value that is one line with single spaces."""
    if b"\n" in value:  # unfold: the line ends go (a lone CR is not one)
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip() + b"\r\n"


def _signature_field(key: SigningKey, tags: Sequence[bytes], signed_fields: bytes) -> bytes:
    """The DKIM-Signature field. Everything up to "b=" is folded once and is both what is hashed
    (with b= empty, §3.7) and what is sent; the signature follows on lines of its own, which a
    verifier removes with the b= value's folding whitespace."""
    name = b"DKIM-Signature"
    head: bytes = dkim.fold(b"; ".join(tags) + b"; b=", namelen=len(name))
    # The signature field itself last, with b= empty and no CRLF at its end.
    digest = hashlib.sha256(signed_fields + b"dkim-signature:" + relaxed_header(head)[:-2]).digest()
    signature = base64.b64encode(key.sign_digest(digest))
    lines = [signature[i:i + _B_LINE] for i in range(0, len(signature), _B_LINE)]
    return name + b": " + head + b"\r\n " + b"\r\n ".join(lines) + b"\r\n"
