"""The `fifa` console script: help, honest not-yet commands, prep forwarding."""

import os
import stat
import subprocess
import sys

import pytest


FIFA = [sys.executable, "-m", "fifa_jax.cli"]


def run(*args, env=None):
  return subprocess.run([*FIFA, *args], capture_output=True, text=True,
                        env={**os.environ, **(env or {})})


def test_help_lists_every_subcommand():
  r = run("--help")
  assert r.returncode == 0
  for cmd in ("prep", "data", "train", "eval", "infer", "serve", "convert", "fict", "params"):
    assert cmd in r.stdout
  r = run("convert", "--help")
  for cmd in ("farl", "llama", "sam", "model", "peft"):
    assert cmd in r.stdout
  r = run("data", "--help")
  for cmd in ("synth", "build", "stats", "show", "adapt"):
    assert cmd in r.stdout


@pytest.mark.slow
def test_infer_and_eval_reject_bad_input_before_loading_anything(tmp_path):
  r = run("infer", "--checkpoint", str(tmp_path / "none"), "--image", str(tmp_path / "none.png"),
          "--task", "det", "--out", str(tmp_path / "o"))
  assert r.returncode == 2 and "none.png' does not exist" in r.stderr
  (tmp_path / "text.png").write_text("not an image")
  r = run("infer", "--checkpoint", str(tmp_path / "none"), "--image", str(tmp_path / "text.png"),
          "--task", "det", "--out", str(tmp_path / "o"))
  assert r.returncode == 2 and "could not be read as an image" in r.stderr
  r = run("eval", "--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path), "--out", str(tmp_path / "o"))
  assert r.returncode == 2 and "does not exist" in r.stderr
  r = run("eval", "--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
          "--param-dtype", "int8")
  assert r.returncode == 2 and "--param-dtype must be one of float32, bfloat16, float16, got 'int8'" in r.stderr
  assert "Traceback" not in r.stderr
  r = run("serve", "--checkpoint", str(tmp_path / "none"))
  assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_fict_dump_via_fifa():
  r = run("fict", "--dump")
  assert r.returncode == 0 and r.stdout.splitlines()[0] == "whole facial image"
  assert len(r.stdout.splitlines()) == 184

def test_prep_forwards_arguments_and_exit_code(tmp_path):
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\necho \"prep got: $@\"\nexit 3\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  r = run("prep", "regions", "img.png", "--out", "x.npz", env={"FIFA_PREP_PYTHON": str(fake)})
  assert r.returncode == 3
  assert "prep got: -m data_prep.cli regions img.png --out x.npz" in r.stdout

def test_data_synth_forwards_to_prep(tmp_path):
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\necho \"prep got: $@\"\nexit 0\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  r = run("data", "synth", "--out", "d", "--n", "6", env={"FIFA_PREP_PYTHON": str(fake)})
  assert r.returncode == 0 and "prep got: -m data_prep.cli synth --out d --n 6" in r.stdout


def test_data_build_names_a_missing_input(tmp_path):
  r = run("data", "build", str(tmp_path), "-a", str(tmp_path), "-o", str(tmp_path / "o"))
  assert r.returncode == 2 and "manifest.jsonl" in r.stderr and "no manifest" in r.stderr


def test_prep_without_its_environment_is_a_clear_error(tmp_path):
  r = run("prep", "--help", env={"FIFA_PREP_PYTHON": str(tmp_path / "missing" / "python")})
  assert r.returncode == 2 and "data_prep environment is missing" in r.stderr


def test_params_prints_counts_per_component():
  r = run("params", "--config", "tiny")
  assert r.returncode == 0, r.stderr
  rows = dict(line.split() for line in r.stdout.splitlines())
  assert {"vit", "llm", "lora", "decoder", "pixel_decoder", "total"} <= set(rows)
  counts = {k: int(v.replace(",", "")) for k, v in rows.items()}
  assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
  bad = run("params", "--config", "huge")
  assert bad.returncode == 2 and "unknown --config" in bad.stderr
