"""`make demo`'s Deepfake-Agent step: manifests and the agent's YAML.

  python scripts/demo_agent.py DEMO_OUT

writes DEMO_OUT/agent/{dev,test}.jsonl (synthetic fakes and reals of the held-out
splits, plus, in test, a picture without a face) and agent.yaml: the face expert is the
demo model; the semantic expert is the scripted stand-in (fifa_jax/agent/scripted.py),
named `semantic-scripted` so that no table mistakes it for GPT-4o or Gemini.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np


def rows(synth: Path, split: str, fakes: int, reals: int) -> list[dict]:
  found = [json.loads(l) for l in (synth / "manifest.jsonl").read_text().splitlines()]
  picked = ([r for r in found if r["split"] == split and r["label"] == "fake"][:fakes]
            + [r for r in found if r["split"] == split and r["label"] == "real"][:reals])
  return [{"image": r["image"], "path": str((synth / r["image"]).resolve()), "label": r["label"],
           "domain": "face"} for r in picked]


def no_face(path: Path) -> None:
  """Shapes on a gradient: a picture the face finder finds no face in."""
  y, x = np.mgrid[0:256, 0:320]
  img = np.stack([x * 0.7, y * 0.8, 255 - x * 0.6], -1).astype(np.uint8)
  cv2.rectangle(img, (30, 40), (140, 200), (40, 160, 60), -1)
  cv2.circle(img, (230, 120), 60, (200, 60, 40), -1)
  cv2.imwrite(str(path), img)


def main(out: str) -> int:
  demo = Path(out).resolve()
  agent = demo / "agent"
  agent.mkdir(parents=True, exist_ok=True)
  dev = rows(demo / "synth", "dev", 6, 6)
  test = rows(demo / "synth", "test", 8, 5)
  no_face(agent / "no_face.png")
  test.append({"image": "no_face.png", "path": str(agent / "no_face.png"), "label": "real", "domain": "no face"})
  for name, rs in (("dev", dev), ("test", test)):
    (agent / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
  (agent / "agent.yaml").write_text(
      "# make demo's agent: the demo model as the face expert, and a scripted stand-in for the\n"
      "# semantic expert's endpoints (it answers from the synthetic data's known masks).\n"
      "experts:\n"
      f"  face: {{kind: face, checkpoint: {demo / 'train'}, faces: all}}\n"
      f"  semantic-scripted: {{kind: scripted-semantic, truth: {demo / 'synth' / 'manifest.jsonl'}, error_every: 4}}\n")
  print(f"wrote {agent}/dev.jsonl ({len(dev)} images), test.jsonl ({len(test)}), agent.yaml")
  return 0


if __name__ == "__main__":
  raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "demo_out"))
