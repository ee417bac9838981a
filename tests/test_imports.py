"""The planner's import path must never pull in torch (DESIGN.md: recommend answers in seconds)."""

from __future__ import annotations

import subprocess
import sys


def test_import_planner_does_not_import_torch() -> None:
    code = (
        "import sys, planner, planner.cli, catalog, profiler, runners\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'boto3', 'sky') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
