"""A tiny run of the benchmark harness, so that it cannot rot. It measures nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_bench_quick_run_writes_report(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"

    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--dsn", dsn, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    report = out.read_text()
    assert "## Targets" in report
    assert "| plain |" in report
    assert "Enqueue-to-start latency" in report
