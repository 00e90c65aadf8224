"""`fifa plan`: a recipe's train step compiled ahead of time on fake devices, nothing
allocated; a plan that does not fit its chip exits 1 with a line saying what to change."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FIFA = [sys.executable, "-m", "fifa_jax.cli", "plan"]
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # plan sets the device count


@pytest.mark.slow
def test_plan_prints_per_device_figures_and_refuses_what_does_not_fit():
  # One compile: the plan is printed in full, and within less memory than the step needs
  # the command exits 1 with a line naming what to change.
  r = subprocess.run([*FIFA, "--config", "configs/tiny_cpu.yaml", "--devices", "8", "--chip", "v5e",
                      "--set", "mesh.fsdp=4", "--set", "mesh.tensor=2", "--memory-gib", "0.001"],
                     capture_output=True, text=True, env=ENV)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "8 x TPU v5e, mesh {'data': 1, 'fsdp': 4, 'tensor': 2}" in r.stdout
  assert "DOES NOT FIT" in r.stdout and "all-gather" in r.stdout and "roofline: at least" in r.stdout
  assert "more than a TPU v5e's 0.0 GiB: raise mesh.fsdp, set model.remat=true" in r.stderr


def test_plan_input_errors_exit_2():
  r = subprocess.run([*FIFA, "--config", "configs/tiny_cpu.yaml", "--chip", "tpu9"],
                     capture_output=True, text=True, env=ENV)
  assert r.returncode == 2 and "unknown --chip 'tpu9'" in r.stderr
  r = subprocess.run([*FIFA, "--config", "configs/tiny_cpu.yaml", "--devices", "3", "--set", "mesh.fsdp=2"],
                     capture_output=True, text=True, env=ENV)
  assert r.returncode == 2 and "mesh" in r.stderr and "Traceback" not in r.stderr
