"""The BIDS schema validator (PyPI ``bids-validator-deno``: the reference TypeScript validator, compiled, with its
schema inside, so it runs offline) as a function: the issues it reports on a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"


def validate(root: Path) -> dict:
    """``{"errors": [...], "warnings": [...]}``, each issue as ``code location subCode``."""
    proc = subprocess.run([str(VALIDATOR), str(root), "--format", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    out: dict[str, list[str]] = {"errors": [], "warnings": []}
    for issue in report["issues"]["issues"]:
        text = " ".join(str(issue.get(k) or "") for k in ("code", "location", "subCode")).strip()
        out["errors" if issue["severity"] == "error" else "warnings"].append(text)
    assert proc.returncode in (0, 16), proc.stderr  # 16: errors found, reported above
    return out
