"""One log line per event, ``key=value`` (like Postfix's maillog), never with message content.

Call sites pass the event name and fields; values with spaces or quotes are quoted. Nothing here
inspects values for PHI: the rule is that callers pass ids, addresses, codes and counts only,
never a subject, body or attachment name.
"""

from __future__ import annotations

import logging
import sys

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:/@[]<>+=,")


def _format_value(value: object) -> str:
    text = str(value)
    if text and all(ch in _SAFE for ch in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log `name` with its fields as ``event=name k=v ...``; None values are left out."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={name}"]
    parts.extend(f"{key}={_format_value(value)}" for key, value in fields.items() if value is not None)
    logger.log(level, " ".join(parts))


def setup(level: str, node_id: str = "") -> None:
    """Log to stderr (journald adds the timestamp under systemd). In a cluster each line starts
    with the node's id, so merged logs say which node spoke."""
    handler = logging.StreamHandler(sys.stderr)
    # name[pid] as in Postfix's maillog: with several processes, which one said it.
    node = f"node={node_id} " if node_id else ""
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {node}%(name)s[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command line at INFO (addresses, and AUTH exchanges it only partly
    # masks); our own events say what matters, so keep its logger to real problems.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
