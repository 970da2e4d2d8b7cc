"""The examples run as users would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_custom_model_around_two_cells_learns_digits():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "custom_cells.py"), "--steps", "200"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.85  # chance is 0.1; a few hundred steps reach about 0.97
