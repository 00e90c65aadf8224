#!/usr/bin/env python3
"""A command expert's driver for FakeShield and M2F2-Det (`kind: command` in the agent YAML).

Both are PyTorch LLaVA forks with their own pinned environments, so this script uses
the standard library only: copy it into the expert's environment and name it there.

  experts:
    edit:
      kind: command
      command: [/opt/fakeshield/.venv/bin/python, scripts/drivers/forensic_expert.py, fakeshield,
                --upstream, "python DTE-FDM/inference.py --question-file {questions} --answers-file {answers}",
                --upstream-cwd, /opt/fakeshield]

`fifa agent` runs it as `COMMAND --manifest M --out R`.  It

1. writes the upstream question file from M ({"image": id, "path": absolute path}
   per line): {"id": id, "image": path, "text": the preset's question} per line, the
   form both repositories' inference scripts read;
2. runs the `--upstream` command (placeholders {questions} and {answers}: the two
   files), in `--upstream-cwd`; the upstream CLI differs between versions of each
   repository, so the command is the user's, not guessed here;
3. reads the answers JSONL (matched by "id", else by image path or file name) and
   writes one report per image to R: the verdict from the answer's text (the
   preset's phrases), p_fake from the preset's score field, the text; an answer
   that names no verdict and gives no score, or a missing answer, is an abstention
   that says why.  R is written whole or not at all.

Presets:
  fakeshield  question: FakeShield's detection question; text field "outputs" (or
              "text"); p_fake from "p_yes" (or 1 - "p_no"); a mask path in "mask" is
              kept in meta.mask.
  m2f2        question: M2F2-Det's; text field "text" (or "outputs"); p_fake from
              "score", read as P(real) by default (M2F2-Det's head), `--score-means
              fake` when a fork reports P(fake).

A non-zero exit of the upstream command ends this script with exit status 3 and its
stderr's end, which `fifa agent` records as each image's abstention reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

PRESETS = {
    "fakeshield": {
        "question": ("Is this image authentic, or has it been manipulated? Inspect object edges, "
                     "perspective, semantics, lighting, and other visual artifacts, then explain "
                     "the evidence for your conclusion."),
        "text": ("outputs", "text"),
        "real": (r"\bnot (?:been )?tampered\b", r"\bnot manipulated\b", r"\bauthentic\b",
                 r"\btaken directly (?:by|from) (?:a |the )?camera\b"),
        "fake": (r"\bhas been tampered\b", r"\btampered with\b", r"\bmanipulated\b",
                 r"\bforg(?:ed|ery)\b", r"\bfake\b"),
    },
    "m2f2": {
        "question": "Determine whether this face image is real or fake and explain the evidence.",
        "text": ("text", "outputs"),
        "real": (r"\bimage (?:is|appears|looks) (?:to be )?(?:a )?real\b", r"\bauthentic\b",
                 r"\breal person\b"),
        "fake": (r"\bimage (?:is|appears|looks) (?:to be )?(?:a )?fake\b", r"\bmanipulat(?:ed|ion)\b",
                 r"\bai[- ]generated\b", r"\bcomputer[- ]generated\b", r"\bdeepfake\b"),
    },
}


def verdict(text: str, preset: dict) -> str | None:
  """'real', 'fake' or None; the real phrases are tried first ("not manipulated")."""
  low = text.lower()
  if any(re.search(p, low) for p in preset["real"]):
    return "real"
  if any(re.search(p, low) for p in preset["fake"]):
    return "fake"
  return None


def probability(value) -> float | None:
  if isinstance(value, (list, tuple)) and len(value) == 1:
    value = value[0]
  try:
    p = float(value)
  except (TypeError, ValueError):
    return None
  return min(1.0, max(0.0, p)) if p == p else None


def p_fake(answer: dict, name: str, score_means: str) -> float | None:
  if name == "fakeshield":
    p = probability(answer.get("p_yes"))
    if p is None and probability(answer.get("p_no")) is not None:
      p = 1.0 - probability(answer["p_no"])
    return p
  s = probability(answer.get("score"))
  return None if s is None else (s if score_means == "fake" else 1.0 - s)


def report(image: str, name: str, answer: dict | None, score_means: str) -> dict:
  preset = PRESETS[name]
  base = {"image": image, "expert": name, "p_fake": None, "text": "", "boxes": [], "masks": [],
          "meta": {}}
  if answer is None:
    return {**base, "label": "abstain", "meta": {"reason": "the upstream model gave no answer"}}
  text = next((str(answer[k]).strip() for k in preset["text"] if answer.get(k) is not None), "")
  p = p_fake(answer, name, score_means)
  label = verdict(text, preset)
  meta = {"upstream_id": answer.get("id")}
  if answer.get("mask"):
    meta["mask"] = answer["mask"]
  if label is None and p is not None:
    label, meta["label_from"] = ("fake" if p >= 0.5 else "real"), "score"
  if label is None:
    return {**base, "label": "abstain", "text": text,
            "meta": {**meta, "reason": "the answer names no verdict and gives no score"}}
  return {**base, "label": label, "p_fake": p, "text": text, "meta": meta}


def read_jsonl(path: Path, what: str) -> list[dict]:
  rows = []
  for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise SystemExit(f"{what} {path}:{n}: not JSON ({e.msg})")
    if not isinstance(row, dict):
      raise SystemExit(f"{what} {path}:{n}: not a JSON object")
    rows.append(row)
  return rows


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("preset", choices=sorted(PRESETS))
  ap.add_argument("--manifest", required=True, type=Path)
  ap.add_argument("--out", required=True, type=Path)
  ap.add_argument("--upstream", required=True,
                  help="the upstream inference command, with {questions} and {answers}")
  ap.add_argument("--upstream-cwd", default=None, help="folder to run it in (the repository)")
  ap.add_argument("--score-means", choices=("real", "fake"), default="real",
                  help="m2f2: what the upstream 'score' is the probability of")
  ap.add_argument("--question", default=None, help="replace the preset's question")
  a = ap.parse_args(argv)

  items = read_jsonl(a.manifest, "manifest")
  for n, row in enumerate(items, 1):
    if not isinstance(row.get("image"), str) or not isinstance(row.get("path"), str):
      raise SystemExit(f"manifest {a.manifest}:{n}: needs 'image' and 'path' strings")
  with tempfile.TemporaryDirectory(prefix=f"{a.preset}-") as tmp:
    questions, answers = Path(tmp) / "questions.jsonl", Path(tmp) / "answers.jsonl"
    question = a.question or PRESETS[a.preset]["question"]
    questions.write_text("".join(json.dumps({"id": r["image"], "image": r["path"], "text": question})
                                 + "\n" for r in items), encoding="utf-8")
    cmd = [part.format(questions=questions, answers=answers) for part in shlex.split(a.upstream)]
    try:
      run = subprocess.run(cmd, cwd=a.upstream_cwd, capture_output=True, text=True)
    except OSError as e:
      print(f"upstream command {cmd[0]!r} could not start: {e}", file=sys.stderr)
      return 3
    if run.returncode != 0:
      print(f"upstream command exited {run.returncode}: {run.stderr.strip()[-400:]}", file=sys.stderr)
      return 3
    if not answers.exists():
      print(f"upstream command wrote no answers file ({answers.name})", file=sys.stderr)
      return 3
    found = read_jsonl(answers, "answers")
  by_id = {str(r["id"]): r for r in found if r.get("id") is not None}
  by_path = {str(r.get("image")): r for r in found if r.get("image")}
  by_name = {Path(str(r.get("image"))).name: r for r in found if r.get("image")}
  out = []
  for row in items:
    answer = by_id.get(row["image"]) or by_path.get(row["path"]) or by_name.get(Path(row["path"]).name)
    out.append(report(row["image"], a.preset, answer, a.score_means))
  tmp_out = a.out.with_name(a.out.name + ".partial")
  tmp_out.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
  os.replace(tmp_out, a.out)  # whole or absent
  print(f"{len(out)} reports ({sum(r['label'] == 'abstain' for r in out)} abstentions) -> {a.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
