"""Launch `fifa train` on every worker of a TPU pod slice.

  python launch/tpu.py --tpu my-v5e-16 --zone us-west4-a --config configs/tpu_v5e_16.yaml \
      --workdir gs://bucket/runs/fifa --dry-run

runs (or with --dry-run only prints):

  gcloud compute tpus tpu-vm ssh my-v5e-16 --zone=us-west4-a [--project=P] --worker=all \
      --command='cd ~/fifa-jax && .venv/bin/python -m fifa_jax.cli train --config ... \
                 --workdir ... --set distributed.initialize=true'

Every worker runs the same command; `jax.distributed.initialize()` finds the
slice's coordinator by itself on Cloud TPU.  The repository and its .venv must
already be on every worker at --repo-dir; `--setup` first runs `git pull && make
main-env ACCEL=tpu` there, which installs jax's TPU extra (libtpu) into .venv.  The workdir must be shared by all workers (a gs://
bucket): orbax writes one checkpoint from all of them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import setup_command, train_command  # noqa: E402


def commands(a) -> list[list[str]]:
  base = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.tpu, f"--zone={a.zone}"]
  if a.project:
    base.append(f"--project={a.project}")
  base.append("--worker=all")
  out = []
  if a.setup:
    out.append(base + ["--command=" + setup_command(a.repo_dir, "tpu")])
  out.append(base + ["--command=" + train_command(a.repo_dir, a.config, a.workdir, a.set)])
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tpu", required=True, help="TPU VM (slice) name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True, help="shared by all workers (gs://...)")
  p.add_argument("--repo-dir", default="~/fifa-jax")
  p.add_argument("--set", action="append", default=[], help="passed to fifa train --set")
  p.add_argument("--setup", action="store_true", help="git pull and make main-env ACCEL=tpu on every worker first")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  a = p.parse_args(argv)
  for cmd in commands(a):
    print(shlex.join(cmd), flush=True)
    if not a.dry_run:
      rc = subprocess.call(cmd)
      if rc:
        return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
