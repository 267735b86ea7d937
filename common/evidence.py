"""What every figure this package writes carries beside it: the code's commit, and a measured ratio as the
tables print it. Used by the compliance drivers (plans, packages, the results page) and by bench alike."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD of the checkout this code runs from, marked when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def ratio_text(ratio: dict) -> str:
    """A bench.json ratio as the tables show it: the value, or why there is none (timing noise)."""
    if ratio["value"] is None:
        return f"not measured ({ratio['unreliable']})"
    return f"{ratio['value']:.2f}"
