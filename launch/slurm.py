"""Launch `fifa train` on SLURM GPU nodes: one process per node, all its GPUs.

  python launch/slurm.py --nodes 2 --gpus-per-node 4 --config configs/gpu_4x_h800.yaml \
      --workdir /shared/runs/fifa --dry-run

writes an sbatch script (printed with --dry-run, with the `sbatch` line that
would submit it).  `srun` starts one `fifa train` per node;
`jax.distributed.initialize()` reads SLURM's variables (nodes, rank, the first
node as coordinator).  SLURM sends SIGTERM 120 s before the time limit
(`--signal`), `fifa train` then saves and exits 143, and `--requeue` lets the
job restart and resume from that checkpoint.  The workdir must be on a file
system all nodes share.  `--setup` first runs `git pull && make main-env
ACCEL=cuda12` (or `--accel cuda13`) on every node, which installs jax's CUDA
extra into .venv (with a shared checkout, one node's install serves all).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import setup_command, train_command  # noqa: E402


def script(a) -> str:
  lines = [
      "#!/bin/bash",
      f"#SBATCH --job-name={a.job_name}",
      f"#SBATCH --nodes={a.nodes}",
      "#SBATCH --ntasks-per-node=1",
      f"#SBATCH --gpus-per-node={a.gpus_per_node}",
      f"#SBATCH --cpus-per-task={a.cpus_per_task}",
      f"#SBATCH --time={a.time}",
      "#SBATCH --signal=TERM@120",
      "#SBATCH --requeue",
      f"#SBATCH --output={a.workdir}/slurm-%j.out",
  ]
  if a.partition:
    lines.append(f"#SBATCH --partition={a.partition}")
  lines += [
      "set -euo pipefail",
      f"mkdir -p {shlex.quote(a.workdir)}",
  ]
  if a.setup:
    # Once: the checkout and its .venv are on the shared file system, like the workdir.
    lines.append("srun --nodes=1 --ntasks=1 bash -c " + shlex.quote(setup_command(a.repo_dir, a.accel)))
  lines += [
      "srun --kill-on-bad-exit=1 bash -c " + shlex.quote(
          train_command(a.repo_dir, a.config, a.workdir, a.set)),
  ]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus-per-node", type=int, default=4)
  p.add_argument("--cpus-per-task", type=int, default=16)
  p.add_argument("--time", default="48:00:00")
  p.add_argument("--partition")
  p.add_argument("--job-name", default="fifa-train")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True, help="on a file system all nodes share")
  p.add_argument("--repo-dir", default=str(Path(__file__).resolve().parent.parent))
  p.add_argument("--set", action="append", default=[], help="passed to fifa train --set")
  p.add_argument("--setup", action="store_true", help="git pull and make main-env ACCEL=... (once, on the first node) first")
  p.add_argument("--accel", choices=("cuda12", "cuda13"), default="cuda12",
                 help="jax's CUDA extra for --setup (default cuda12)")
  p.add_argument("--dry-run", action="store_true", help="print the script and the sbatch line, run nothing")
  a = p.parse_args(argv)
  text = script(a)
  if a.dry_run:
    print(text, end="")
    print(f"# would run: sbatch <this script>")
    return 0
  with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as f:
    f.write(text)
  print(f"sbatch {f.name}", flush=True)
  return subprocess.call(["sbatch", f.name])


if __name__ == "__main__":
  sys.exit(main())
