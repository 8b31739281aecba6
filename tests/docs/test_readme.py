"""Every Python sample in README.md runs as written, in a fresh interpreter and an empty
directory, the way a reader would paste it into a file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"
SAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def _first_line(code: str) -> str:
    return next(line for line in code.splitlines() if line and not line.startswith("from"))


def test_the_readme_has_samples() -> None:
    assert len(SAMPLES) >= 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("code", SAMPLES, ids=[_first_line(code)[:40] for code in SAMPLES])
def test_a_readme_sample_runs_as_written(code: str, tmp_path: Path) -> None:
    script = tmp_path / "sample.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Workers re-running the script would print its output again, or tracebacks.
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.mark.timeout(120)
def test_the_quick_start_output(tmp_path: Path) -> None:
    quick_start = next(code for code in SAMPLES if "count_words" in code)
    (tmp_path / "quick.py").write_text(quick_start)
    done = subprocess.run(
        [sys.executable, "quick.py"], cwd=tmp_path, capture_output=True, text=True, timeout=100
    )
    assert done.stdout.split() == ["6", "6"], (done.stdout, done.stderr[-2000:])
