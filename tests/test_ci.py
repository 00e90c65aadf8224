""".ci/run fails when `make test` fails: a failing test, or no test at all (pytest's exit 5)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ci_with_suite(tmp_path: Path, test_body: str | None) -> int:
  (tmp_path / ".ci").mkdir()
  shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
  (tmp_path / "Makefile").write_text(f"test:\n\t{sys.executable} -m pytest -q -p no:cacheprovider tests\n")
  (tmp_path / "tests").mkdir()
  if test_body is not None:
    (tmp_path / "tests" / "test_x.py").write_text(test_body)
  return subprocess.run(["bash", ".ci/run"], cwd=tmp_path, capture_output=True).returncode


@pytest.mark.parametrize("body, ok", [
    ("def test_ok():\n    assert True\n", True),
    ("def test_bad():\n    assert 1 == 2\n", False),
    (None, False),  # nothing collected: pytest exits 5
])
def test_ci_run_propagates_failures(tmp_path, body, ok):
  assert (_ci_with_suite(tmp_path, body) == 0) == ok


def test_ci_run_calls_make_test():
  assert "make test" in (ROOT / ".ci" / "run").read_text()
