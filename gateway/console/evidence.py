"""The evidence pack for an auditor: one zip for a period, with

- ``records.jsonl``: every audit record of the period, exactly as the log holds them (each with its
  hash and MAC: `mailward audit verify` on any node with the audit key checks them);
- ``verification.json``: the `audit verify` result of the whole log (and, in a cluster, of every
  node's chain in the copy) when the pack was made;
- ``policies/``: the DLP policy files in force;
- ``summary.html``: the report's counts for the period, readable offline;
- ``SHA256SUMS``: the SHA-256 of each of those files, checkable with ``sha256sum -c SHA256SUMS``,
  and ``SHA256SUMS`` itself is named with its own digest in the console and the audit record of
  the pack's making, so the recipient can tell the pack is the one that was made.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import jinja2

from gateway.audit import trace
from gateway.config import Config


def build(config: Config, records: list[dict[str, Any]], counts: dict[str, Any], period: str,
          templates: jinja2.Environment) -> tuple[bytes, str]:
    """The zip and the SHA-256 of its SHA256SUMS. Blocking (reads the log and policies)."""
    local, shipped = trace.verify(config)
    files: dict[str, bytes] = {
        "records.jsonl": "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
                                 for r in records).encode("utf-8"),
        "verification.json": json.dumps(trace.verification_json(local, shipped), indent=1).encode(),
        "summary.html": templates.get_template("summary.html.j2").render(
            counts=counts, period=period, hostname=config.hostname).encode("utf-8"),
    }
    for path in sorted(_policy_files(config)):
        files[f"policies/{path.name}"] = path.read_bytes()
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items()).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as pack:
        for name, data in files.items():
            pack.writestr(name, data)
        pack.writestr("SHA256SUMS", sums)
    return buffer.getvalue(), hashlib.sha256(sums).hexdigest()


def _policy_files(config: Config) -> list[Path]:
    if config.policies_dir is None:
        from importlib import resources

        return [Path(str(resources.files("gateway.policies").joinpath("healthcare.yaml")))]
    return [p for p in config.policies_dir.glob("*.yaml") if p.is_file()]
