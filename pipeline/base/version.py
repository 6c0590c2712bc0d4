"""Which code wrote a row: the package version and, in a git checkout, its commit."""
from __future__ import annotations

import subprocess
from pathlib import Path


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("trufor-scan")
    except PackageNotFoundError:
        v = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v
