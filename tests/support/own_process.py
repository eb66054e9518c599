"""Code that must not take time growing with the square of its input, run where it can be stopped."""

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).parents[2]


def runs_in_time(script: str, *, timeout: float) -> None:
    """Run ``script`` in a Python process of its own, from the repository's root; fail if it fails
    or is still running after ``timeout`` seconds (it is then stopped: a thread could not be)."""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=timeout, cwd=REPOSITORY)
