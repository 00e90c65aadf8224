"""`fifa train` on two processes (4 CPU devices each, gloo collectives over loopback) against
one process with 8 devices: the multi-host paths (jax.distributed start-up, per-host data
slices, global batches from process-local rows, bucket-length agreement, orbax saves by
every process, per-process grain state, preemption agreed across hosts, resume) run for
real, and the parameters match: the one-process run's up to summation order, and an
uninterrupted two-process run's bit for bit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fifa_jax.data import toy
from fifa_jax import checkpoint as ckpt_lib
from fifa_jax.train import metrics as metrics_lib

from test_train_resume import REPO, flat

STEPS, EVERY = 9, 3
MESH = ["--set", "mesh.data=2", "--set", "mesh.fsdp=2", "--set", "mesh.tensor=2"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy")
  toy.write_toy_dataset(root, n_images=6)
  return root


def command(root, workdir, steps, extra=()):
  return [sys.executable, "-m", "fifa_jax.cli", "train", "--config", str(REPO / "configs/tiny_cpu.yaml"),
          "--workdir", str(workdir), "--set", f"data.root={root}", "--set", f"train.steps={steps}",
          "--set", f"checkpoint.every={EVERY}", "--set", "checkpoint.keep=10", "--set", "checkpoint.async_save=false",
          "--set", "train.log_every=1", "--set", "train.progress=false", *MESH, *extra]


def environment(devices: int) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return e


def logged_step(workdir) -> int:
  path = workdir / "metrics.jsonl"
  lines = path.read_text().split("\n")[:-1] if path.exists() else []  # whole lines only
  return json.loads(lines[-1])["step"] if lines else 0


def run_two_processes(root, workdir, steps, sigterm_process_1_after=None):
  """Both processes' (exit status, stderr); with `sigterm_process_1_after`, process 1
  alone gets SIGTERM from outside once metrics.jsonl (process 0's) shows that step."""
  port = free_port()
  procs = [subprocess.Popen(
      command(root, workdir, steps, ["--set", f"distributed.coordinator=127.0.0.1:{port}",
                                     "--set", "distributed.num_processes=2",
                                     "--set", f"distributed.process_id={i}",
                                     "--set", "distributed.timeout_s=120"]),
      env=environment(4), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  if sigterm_process_1_after is not None:
    deadline = time.monotonic() + 600
    while (procs[1].poll() is None and logged_step(workdir) < sigterm_process_1_after
           and time.monotonic() < deadline):
      time.sleep(0.005)
    procs[1].send_signal(signal.SIGTERM)
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=900)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append((p.returncode, err))
  return outs


def check_ok(outs):
  for i, (rc, err) in enumerate(outs):
    assert rc == 0, f"process {i} exited {rc}:\n{err[-4000:]}"
  return [err for _, err in outs]


@pytest.mark.slow
@pytest.mark.serial  # two processes meet in gloo collectives: no other test may starve them
def test_two_processes_match_one_process_and_resume(root, tmp_path):
  one = subprocess.run(command(root, tmp_path / "one", STEPS), env=environment(8), cwd=REPO,
                       capture_output=True, text=True, timeout=900)
  assert one.returncode == 0, one.stderr[-4000:]

  two = tmp_path / "two"
  # Preempted: SIGTERM reaches process 1 only; both hosts save the same step and exit 143.
  outs = run_two_processes(root, two, STEPS, sigterm_process_1_after=2)
  assert [rc for rc, _ in outs] == [143, 143], "\n".join(err[-3000:] for _, err in outs)
  errs = [err for _, err in outs]
  for i, err in enumerate(errs):
    assert f"[process {i}/2" in err and "local devices (4)" in err and "global devices 8" in err, err[-2000:]
  saved = int(re.search(r"SIGTERM: saved step (\d+)", errs[0]).group(1))
  assert 2 <= saved < STEPS
  # Every process wrote its part of that step, its own grain iterator state included.
  data_dir = two / "checkpoints" / str(saved) / "data"
  assert sorted(p.name for p in data_dir.glob("process_*")) == ["process_0-of-2.json",
                                                                 "process_1-of-2.json"]
  errs = check_ok(run_two_processes(root, two, STEPS))  # resumes at the saved step
  assert "resumed from" in errs[0] and f"(step {saved})" in errs[0], errs[0][-2000:]
  # Metrics come from process 0 only: one line per step.
  two_log = metrics_lib.read_jsonl(two / "metrics.jsonl")
  assert [r["step"] for r in two_log] == list(range(1, STEPS + 1))
  # Each global batch holds the same samples as the one-process run's: the losses agree.
  one_log = metrics_lib.read_jsonl(tmp_path / "one" / "metrics.jsonl")
  np.testing.assert_allclose([r["train/loss"] for r in two_log], [r["train/loss"] for r in one_log],
                             rtol=1e-5)

  # The two-process checkpoint loads in this single process (CPU only), and the
  # parameters equal the one-process run's up to summation order: the same samples
  # make each global batch, only their rows are laid out by host.
  pa = flat(ckpt_lib.load_params(tmp_path / "one" / "checkpoints", STEPS))
  pb = flat(ckpt_lib.load_params(two / "checkpoints", STEPS))
  assert pa.keys() == pb.keys() and len(pa) > 100
  p0 = flat(ckpt_lib.load_params(tmp_path / "one" / "checkpoints", EVERY))
  moved = max(float(np.abs(pa[k] - p0[k]).max()) for k in pa)
  worst = max(float(np.abs(pa[k] - pb[k]).max()) for k in pa)
  print(f"2 processes x 4 devices vs 1 x 8 after {STEPS} steps: max abs diff {worst:.2e} "
        f"(parameters moved up to {moved:.2e} since step {EVERY}); preempted at {saved}")
  assert moved > 1e-3
  for k in pa:
    np.testing.assert_allclose(pb[k], pa[k], rtol=0, atol=5e-5, err_msg=k)

  # Preempted and resumed is bit-equal to the same two processes never interrupted.
  check_ok(run_two_processes(root, tmp_path / "straight", STEPS))
  pc = flat(ckpt_lib.load_params(tmp_path / "straight" / "checkpoints", STEPS))
  for k in pb:
    np.testing.assert_array_equal(pb[k], pc[k], err_msg=k)
  assert jax.process_count() == 1
