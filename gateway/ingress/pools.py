"""The egress pool a relaying client asks for with an ``X-Mailward-Pool`` header.

Only clients allowed to relay reach DATA, so the header is trusted as far as it names a
configured pool. It is removed from the message at once (before DLP, the spool and DKIM): it is an
instruction to the gateway, not part of what the recipient gets.
"""

from __future__ import annotations

import re

HEADER = b"x-mailward-pool"
_FIELD = re.compile(rb"^X-Mailward-Pool[ \t]*:[ \t]*([^\r\n]*)\r?\n(?:[ \t][^\r\n]*\r?\n)*",
                    re.IGNORECASE | re.MULTILINE)


def take_pool_header(content: bytes) -> tuple[str | None, bytes]:
    """The pool the header names (the first, if repeated) and the content without any of them."""
    end = content.find(b"\r\n\r\n")
    end = end + 2 if end >= 0 else len(content)
    head = content[:end]
    if HEADER not in head.lower():
        return None, content
    found = _FIELD.search(head)
    value = found.group(1).decode("ascii", "replace").strip() if found else None
    return value or None, _FIELD.sub(b"", head) + content[end:]
