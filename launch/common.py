"""Shared by the launchers: the `fifa train` command line every host runs."""

from __future__ import annotations

import shlex


def _cd(repo_dir: str) -> str:
  # A leading ~/ stays unquoted so the remote shell expands it.
  where = "~/" + shlex.quote(repo_dir[2:]) if repo_dir.startswith("~/") else shlex.quote(repo_dir)
  return f"cd {where} && "


def setup_command(repo_dir: str, accel: str) -> str:
  """Bring the checkout up to date and install .venv with jax for `accel` (cuda12, tpu...)."""
  return _cd(repo_dir) + f"git pull --ff-only && make main-env ACCEL={shlex.quote(accel)}"


def train_command(repo_dir: str, config: str, workdir: str, overrides: list[str],
                  python: str = ".venv/bin/python") -> str:
  """`cd REPO && python -m fifa_jax.cli train ...` with jax.distributed turned on."""
  args = [python, "-m", "fifa_jax.cli", "train", "--config", config, "--workdir", workdir,
          "--set", "distributed.initialize=true"]
  for o in overrides:
    args += ["--set", o]
  return _cd(repo_dir) + " ".join(shlex.quote(a) for a in args)
