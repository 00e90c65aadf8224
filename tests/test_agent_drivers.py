"""The FakeShield / M2F2-Det driver (scripts/drivers/forensic_expert.py) run as a command
expert, against stand-ins for the upstream inference scripts that answer in each
repository's output form."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from fifa_jax.agent.experts import CommandExpert

DRIVER = str(Path(__file__).resolve().parent.parent / "scripts" / "drivers" / "forensic_expert.py")

# Answers keyed by the image's file name; each stand-in writes them in its upstream's fields.
STANDIN = textwrap.dedent("""
    import argparse, json, os, sys
    ap = argparse.ArgumentParser()
    ap.add_argument("--question-file"); ap.add_argument("--answers-file"); ap.add_argument("--form")
    ap.add_argument("--fail", action="store_true")
    a = ap.parse_args()
    if a.fail:
        sys.exit("CUDA out of memory")
    answers = json.load(open(os.environ["CANNED"]))
    with open(a.answers_file, "w") as out:
        for line in open(a.question_file):
            q = json.loads(line)
            name = q["image"].rsplit("/", 1)[-1]
            if name not in answers:
                continue  # the model skipped it
            text, p = answers[name]
            rec = {"id": q["id"], "image": q["image"], "question": q["text"]}
            if a.form == "fakeshield":
                rec.update(outputs=text, p_yes=p)
            else:
                rec.update(text=text, score=None if p is None else [1 - p])  # M2F2's score: P(real)
            out.write(json.dumps(rec) + "\\n")
""")


@pytest.fixture
def images(tmp_path):
  for name in ("a.png", "b.png", "c.png", "d.png"):
    (tmp_path / name).write_bytes(b"not read by the driver")
  return [(name, str(tmp_path / name)) for name in ("a.png", "b.png", "c.png", "d.png")]


def expert(tmp_path, monkeypatch, preset, canned, *extra):
  (tmp_path / "standin.py").write_text(STANDIN)
  (tmp_path / "canned.json").write_text(json.dumps(canned))
  monkeypatch.setenv("CANNED", str(tmp_path / "canned.json"))
  upstream = f"{sys.executable} standin.py --question-file {{questions}} --answers-file {{answers}} --form {preset}"
  return CommandExpert(preset, [sys.executable, DRIVER, preset, "--upstream", upstream,
                                "--upstream-cwd", str(tmp_path), *extra])


def test_fakeshield_answers_become_reports(tmp_path, monkeypatch, images):
  canned = {"a.png": ["The image has been tampered with: the left eye's edge is blurred.", 0.93],
            "b.png": ["The image is authentic and was not tampered.", 0.08],
            "c.png": ["I cannot tell.", None]}
  got = {r.image: r for r in expert(tmp_path, monkeypatch, "fakeshield", canned).report_many(images)}
  assert (got["a.png"].label, got["a.png"].p_fake) == ("fake", 0.93)
  assert got["a.png"].text.startswith("The image has been tampered with")
  assert (got["b.png"].label, got["b.png"].p_fake) == ("real", 0.08)
  assert got["c.png"].label == "abstain" and "names no verdict" in got["c.png"].meta["reason"]
  assert got["d.png"].label == "abstain" and "gave no answer" in got["d.png"].meta["reason"]


def test_m2f2_scores_are_read_as_p_real_unless_told(tmp_path, monkeypatch, images):
  canned = {"a.png": ["The image is fake: a deepfake blending boundary.", 0.9],
            "b.png": ["Hard to say.", 0.2]}
  got = {r.image: r for r in expert(tmp_path, monkeypatch, "m2f2", canned).report_many(images)}
  assert got["a.png"].label == "fake" and got["a.png"].p_fake == pytest.approx(0.9)
  assert got["b.png"].label == "real" and got["b.png"].meta["label_from"] == "score"
  flipped = expert(tmp_path, monkeypatch, "m2f2", canned, "--score-means", "fake").report_many(images)
  assert flipped[0].p_fake == pytest.approx(0.1)  # the same number read as P(fake)


def test_a_failing_upstream_is_every_images_abstention_with_its_reason(tmp_path, monkeypatch, images):
  e = expert(tmp_path, monkeypatch, "fakeshield", {})
  e.command[e.command.index("--upstream") + 1] += " --fail"
  got = e.report_many(images)
  assert all(r.label == "abstain" for r in got)
  assert "exited 3" in got[0].meta["reason"] and "CUDA out of memory" in got[0].meta["reason"]
