"""`fifa train` end to end in subprocesses (with gradient accumulation): the loss falls; SIGTERM saves and exits 143;
a SIGKILLed run resumed ends with parameters bit-equal to an uninterrupted run."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from fifa_jax.data import toy
from fifa_jax import checkpoint as ckpt_lib
from fifa_jax.train import metrics as metrics_lib

REPO = Path(__file__).resolve().parent.parent
STEPS = 30  # enough steps that a signal sent after the first logged ones lands mid-run


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy")
  toy.write_toy_dataset(root, n_images=6)
  e = dict(os.environ)
  # One device in the subprocesses (the tests' 8 are for the sharding tests), and a
  # compilation cache shared by the runs, so only the first one compiles.
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))
  return root, e


def logged_step(workdir: Path) -> int:
  """The last step metrics.jsonl records (0 before the first line is whole)."""
  path = workdir / "metrics.jsonl"
  lines = path.read_text().split("\n")[:-1] if path.exists() else []  # whole lines only
  return json.loads(lines[-1])["step"] if lines else 0


def fifa_train(env, workdir, signal_after=None):
  """Run `fifa train`; with signal_after=(step, sig), send it `sig` from outside, as a
  scheduler would, once metrics.jsonl shows that `step` (or a later one) finished."""
  root, e = env
  cmd = [sys.executable, "-m", "fifa_jax.cli", "train", "--config", str(REPO / "configs/tiny_cpu.yaml"),
         "--workdir", str(workdir), "--set", f"data.root={root}", "--set", f"train.steps={STEPS}",
         "--set", "checkpoint.every=2", "--set", "train.log_every=1", "--set", "train.progress=false",
         # Gradient accumulation on (2 micro-batches of 4): exact resume holds through it too.
         "--set", "train.grad_accum=2"]
  proc = subprocess.Popen(cmd, env=e, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if signal_after:
    step, sig = signal_after
    deadline = time.monotonic() + 600
    while proc.poll() is None and logged_step(Path(workdir)) < step and time.monotonic() < deadline:
      time.sleep(0.005)
    if proc.poll() is None:
      proc.send_signal(sig)
  out, err = proc.communicate(timeout=600)
  return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_train_loss_falls_and_resume_is_exact(env, tmp_path):
  # 1. Uninterrupted.
  a = fifa_train(env, tmp_path / "a")
  assert a.returncode == 0, a.stderr[-3000:]
  assert "[process 0/1" in a.stderr and "mesh {'data': 1" in a.stderr
  log = metrics_lib.read_jsonl(tmp_path / "a" / "metrics.jsonl")
  losses = [r["train/loss"] for r in log]
  print(f"tiny_cpu loss over {STEPS} steps: {losses[0]:.4f} -> {losses[-1]:.4f}")
  assert len(losses) == STEPS and losses[-1] < losses[0] - 0.3, losses
  assert all(np.isfinite(losses))
  assert any(k.startswith("train/det/") for k in log[0]) and "perf/tokens_per_s" in log[0]
  assert list((tmp_path / "a" / "tb").glob("events.out.tfevents.*"))

  # 2. Preempted: SIGTERM once step 3 is logged -> a final save at the step then
  #    finishing, exit 143.
  b = tmp_path / "b"
  r = fifa_train(env, b, signal_after=(3, signal.SIGTERM))
  assert r.returncode == 143, r.stderr[-3000:]
  saved = int(re.search(r"SIGTERM: saved step (\d+)", r.stderr).group(1))
  assert 3 <= saved < STEPS
  # 3. Resumed there, then SIGKILLed a few steps on (its last save may or may not be whole).
  r = fifa_train(env, b, signal_after=(saved + 3, signal.SIGKILL))
  assert r.returncode == -9, r.stderr[-3000:]
  assert "resumed from" in r.stderr and f"(step {saved})" in r.stderr
  # 4. Resumed again, to the end.
  r = fifa_train(env, b)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from" in r.stderr

  pa = flat(ckpt_lib.load_params(tmp_path / "a" / "checkpoints", STEPS))
  pb = flat(ckpt_lib.load_params(b / "checkpoints", STEPS))
  assert pa.keys() == pb.keys() and len(pa) > 100
  worst = max(float(np.abs(pa[k] - pb[k]).max()) for k in pa)
  print(f"resumed vs uninterrupted: {len(pa)} arrays, max abs diff {worst}")
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
