"""Region Masks on real faces: visibility, unions, crop equivalence, mirror symmetry."""

import numpy as np
import pytest

from data_prep import regions
from fifa_jax import fict

IDX = {n: i for i, n in enumerate(fict.NAMES)}
NOT_VISIBLE_WITHOUT_PARSER = {"hat", "edges of hat", "eyeglasses", "edges of eyeglasses", "left earring",
                              "right earring", "edges of earrings"}
# What the person in each picture does not show (checked on docs/*_regions.png):
# Tom Hanks turns to his left, so his left ear is hidden, the grey background, not
# hair, touches his left temple, and his head and shoulder fill the picture on his
# right (the image's left), leaving no background there.
NOT_VISIBLE = {
    "astronaut": set(),
    "tom": {"upper part of left ear", "lower part of left ear", "edges of left ear", "hair near left temple",
            "right part of background"},
}


def test_every_atomic_concept_has_a_documented_procedure():
  assert sorted(regions.PROCEDURES) == sorted(fict.ATOMIC)
  assert all(len(v) >= 10 for v in regions.PROCEDURES.values())


@pytest.mark.parametrize("which", ["astronaut", "tom"])
def test_visible_concepts_are_not_empty(which, astro_regions, tom_regions):
  face, labels, allm = astro_regions if which == "astronaut" else tom_regions
  assert face.landmarks.shape == (478, 3)
  empty = {a for a in fict.ATOMIC if not allm[IDX[a]].any()}
  assert empty == NOT_VISIBLE_WITHOUT_PARSER | NOT_VISIBLE[which]
  face_concepts = set(fict.atomic_descendants("region around face"))
  assert not (face_concepts & empty) - NOT_VISIBLE[which]


@pytest.mark.parametrize("which", ["astronaut", "tom"])
def test_parents_are_exact_unions_of_atomic_descendants(which, astro_regions, tom_regions):
  _, _, allm = astro_regions if which == "astronaut" else tom_regions
  for p in fict.PARENTS:
    union = np.zeros(allm.shape[1:], bool)
    for a in fict.atomic_descendants(p):
      union |= allm[IDX[a]]
    assert np.array_equal(allm[IDX[p]], union), p
  masks = regions.all_masks(allm[regions.ATOMIC_POS])
  assert list(masks) == list(fict.NAMES)
  assert all(np.array_equal(masks[n], allm[IDX[n]]) for n in fict.NAMES)


@pytest.mark.parametrize("which", ["astronaut", "tom"])
def test_face_crop_gives_the_same_masks_as_the_whole_image(which, astro_regions, tom_regions):
  face, labels, allm = astro_regions if which == "astronaut" else tom_regions
  full = regions.region_masks(labels, face.landmarks, roi=False)
  assert np.array_equal(full, allm[regions.ATOMIC_POS])
  packed = regions.region_masks(labels, face.landmarks, packed=True)
  assert np.array_equal(np.unpackbits(packed, axis=-1, count=labels.shape[1]).view(bool), full)


def _iou(a, b):
  u = np.count_nonzero(a | b)
  return np.count_nonzero(a & b) / u if u else None


def mirror_ious(allm, allm_flipped):
  """IoU of mask(flipped image, c) with flip(mask(image, mirror(c))) for sided concepts."""
  out = {}
  for n in fict.NAMES:
    m = fict.mirror(n)
    if m == n:
      continue
    v = _iou(allm_flipped[IDX[n]], allm[IDX[m]][:, ::-1])
    if v is not None:
      out[n] = v
  return out


@pytest.mark.parametrize("which", ["astronaut", "tom"])
def test_flipped_image_gives_mirrored_masks(which, astro_regions, tom_regions, flipped_regions):
  _, _, allm = astro_regions if which == "astronaut" else tom_regions
  _, _, allm_f = flipped_regions[which]
  ious = mirror_ious(allm, allm_f)
  mean = float(np.mean(list(ious.values())))
  worst = sorted(ious.items(), key=lambda kv: kv[1])[:5]
  print(f"\n{which}: mean flip-mirror IoU over {len(ious)} sided concepts {mean:.3f}; lowest {worst}")
  assert len(ious) >= 60
  assert mean >= 0.8, worst
