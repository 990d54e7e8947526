"""The CUDA decode kernels (Triton) on CPU: `triton_interpret_cases.py` runs in a child pytest
under Triton's interpreter (TRITON_INTERPRET=1), each kernel against the dequantized reference.
Skipped when `triton` is not installed (`pip install triton`; the `test` extra has it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CASES = Path(__file__).with_name("triton_interpret_cases.py")
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("selection", ["int_gemv", "vq_gemv or decode_batches or crvq_kernel"])
def test_triton_kernels_under_the_interpreter(selection):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES), "-k", selection],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]
