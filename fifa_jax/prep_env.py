"""The data_prep environment (.venv-prep): where MediaPipe, and so the annotator and the
face finder, run.  fifa_jax reaches it only as a subprocess (`python -m data_prep.cli`),
because MediaPipe 0.10.21 pins numpy<2 and protobuf<5 (docs/data.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# MediaPipe's C++ start-up logging: noise to a user.
MEDIAPIPE_NOISE = re.compile(r"^([WI]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|INFO: Created TensorFlow Lite"
                             r"|WARNING: All log messages before absl::InitializeLog)")


def prep_python() -> Path:
  """The Python of the data_prep environment ($FIFA_PREP_PYTHON or .venv-prep)."""
  env = os.environ.get("FIFA_PREP_PYTHON")
  return Path(env) if env else REPO_ROOT / ".venv-prep" / "bin" / "python"


def prep_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
  """(argv, environment) that run `python -m data_prep.cli ARGS` in the data_prep environment."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  return [str(prep_python()), "-m", "data_prep.cli", *args], env
