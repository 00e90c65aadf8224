"""Writes region_reference.npz: inputs and Region Masks of the dense implementation
(commit 9170875, before the sparse rewrite), the reference test_sparse_equals_reference
compares the current code with.  Inputs are stored (landmarks, person mask), so the
test does not depend on MediaPipe's output on this machine.  The stored inputs were
made before 2026-11-23, with flip averaging of both MediaPipe models and the selfie
model given the full picture (now: a 256x256 copy, and by default one pass); they
are kept, since the test compares algorithms on fixed inputs.

    .venv-prep/bin/python tests/prep/data/make_region_reference.py
"""

from pathlib import Path

import cv2
import numpy as np

from data_prep import parsing, regions, samples
from data_prep.pipeline import Annotator


def cases():
  astro, tom = samples.astronaut(), samples.tom_hanks()
  head = np.ascontiguousarray(astro[20:210, 130:320])  # bench/bench_annotator.py's aligned face
  return {"astronaut": astro, "tom": tom, "astronaut_flipped": np.ascontiguousarray(astro[:, ::-1]),
          "aligned512": cv2.resize(head, (512, 512), interpolation=cv2.INTER_CUBIC)}


def main():
  cv2.setNumThreads(1)
  ann = Annotator()
  out = {}
  for name, rgb in cases().items():
    face = ann.landmarker.detect(rgb)
    person = ann.parser.person(rgb)
    labels = parsing.builtin_labels(person, face.landmarks)
    atomic = regions.region_masks(labels, face.landmarks)
    out.update({f"{name}/landmarks": face.landmarks, f"{name}/person": np.packbits(person, axis=-1),
                f"{name}/labels": labels, f"{name}/atomic": np.packbits(atomic, axis=-1)})
  np.savez_compressed(Path(__file__).with_name("region_reference.npz"), **out)


if __name__ == "__main__":
  main()
