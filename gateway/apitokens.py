"""API bearer tokens (`api.tokens_file`, 0600): named, scoped, kept only as hashes.

A line per token, ``NAME SCOPES SENDER_DOMAINS POOLS sha256:HEX`` separated by white space, where
SCOPES is ``send``, ``status`` or ``send,status`` and the two lists are ``*`` for any or a comma
list. ``mailward api token add NAME --scope send,status [--sender-domain D] [--pool P]`` writes one
and prints the token once; nothing can print it again. A line that is a bare token (the format
before names and scopes) is read as a token named ``token-N`` with the ``status`` scope.

A presented token is hashed and compared with every stored hash in constant time, so neither the
answer nor its timing says which token was near.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.keyfiles import read_secret, write_secret

SCOPES = ("send", "status")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ANY = "*"


@dataclass(frozen=True)
class ApiToken:
    name: str
    scopes: frozenset[str]
    digest: str  # SHA-256 of the token, hex
    sender_domains: tuple[str, ...] = ()  # () = any
    pools: tuple[str, ...] = ()  # () = any

    def allows_sender(self, sender: str) -> bool:
        domain = sender.rpartition("@")[2].lower().rstrip(".")
        return not self.sender_domains or domain in self.sender_domains

    def allows_pool(self, pool: str | None) -> bool:
        return pool is None or not self.pools or pool in self.pools

    def line(self) -> str:
        return " ".join((self.name, ",".join(sorted(self.scopes)), ",".join(self.sender_domains) or ANY,
                         ",".join(self.pools) or ANY, f"sha256:{self.digest}"))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def load(path: Path) -> list[ApiToken]:
    return parse(read_secret(path).decode("utf-8").splitlines(), str(path))


def parse(lines: list[str], origin: str) -> list[ApiToken]:
    """Tokens from their lines (`origin` names where they came from in errors)."""
    tokens = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) == 1:  # a bare token: the old format
            tokens.append(ApiToken(f"token-{number}", frozenset(("status",)), digest(fields[0])))
            continue
        if len(fields) != 5 or not fields[4].startswith("sha256:"):
            raise ValueError(f"{origin}:{number}: expected NAME SCOPES SENDER_DOMAINS POOLS sha256:HEX")
        name, scopes, domains, pools, hashed = fields
        tokens.append(ApiToken(name, frozenset(scopes.split(",")), hashed[7:],
                               () if domains == ANY else tuple(domains.lower().split(",")),
                               () if pools == ANY else tuple(pools.split(","))))
    return tokens


def find(tokens: list[ApiToken], presented: str) -> ApiToken | None:
    """The token `presented` is, comparing with every stored hash (constant time)."""
    hashed = digest(presented)
    found = None
    for token in tokens:
        if hmac.compare_digest(hashed, token.digest) and found is None:
            found = token
    return found


def new(name: str, scopes: list[str], sender_domains: list[str], pools: list[str],
        existing: list[ApiToken]) -> tuple[str, ApiToken]:
    """A new token (to show once) and its entry (to store), checked against `existing`."""
    if not _NAME.fullmatch(name):
        raise ValueError("a token name is letters, digits, '.', '_' and '-', at most 64")
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise ValueError(f"scopes are {', '.join(SCOPES)}"
                         + (f" (not {', '.join(unknown)})" if unknown else ""))
    if any(token.name == name for token in existing):
        raise ValueError(f"a token named {name} exists; remove it first")
    token = "mw_" + secrets.token_urlsafe(32)
    return token, ApiToken(name, frozenset(scopes), digest(token), tuple(d.lower() for d in sender_domains),
                           tuple(pools))


def add(path: Path, name: str, scopes: list[str], sender_domains: list[str], pools: list[str]) -> str:
    """Store a new token's hash in the file; returns the token (shown once)."""
    token, entry = new(name, scopes, sender_domains, pools, load(path) if path.exists() else [])
    text = read_secret(path).decode("utf-8") if path.exists() else ""
    write_secret(path, (text.rstrip("\n") + ("\n" if text.strip() else "") + entry.line() + "\n").encode())
    return token


def remove(path: Path, name: str) -> bool:
    if not path.exists():
        return False
    kept, removed = [], False
    for raw in read_secret(path).decode("utf-8").splitlines():
        fields = raw.split()
        if len(fields) == 5 and fields[0] == name:
            removed = True
            continue
        kept.append(raw)
    if removed:
        write_secret(path, ("\n".join(kept) + "\n").encode())
    return removed
