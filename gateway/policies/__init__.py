"""The built-in DLP policies, shipped inside the package: used when `policies_dir` is not set.

`healthcare.yaml` is also in the repository's ``policies/`` directory (a link to this file), as
the copy an admin starts from (``scripts/install`` puts it in /etc/mailward/policies)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def builtin_directory() -> Path:
    """The directory of the built-in policy files (a real directory of the installed package)."""
    return Path(str(resources.files(__name__)))
