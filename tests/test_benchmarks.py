"""Every speed benchmark runs, in a tiny mode, so that none can rot (the numbers are the
benchmark's to print, never asserted here)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_all_runs_in_a_tiny_mode():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--records", "4",
                          "--steps", "2", "--max-new-tokens", "4", "--alphas", "2"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("caches make fused decoding", "caching makes these 2 steps", "per move"):
        assert line in out.stdout, out.stdout
