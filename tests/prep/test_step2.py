"""Step 2 (coverage, ranks, flags, parent boxes) and Step 5 (B-AGE) against brute force."""

import numpy as np
import pytest

from data_prep import artifacts, bage, regions
from fifa_jax import fict

NAMES = fict.NAMES


def random_atomic(rng, h=48, w=40):
  """112 random masks: blobs of varied size, some empty, some overlapping."""
  m = np.zeros((len(fict.ATOMIC), h, w), bool)
  for k in range(len(fict.ATOMIC)):
    if rng.random() < 0.1:
      continue
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    y1, x1 = min(h, y0 + rng.integers(1, h // 2)), min(w, x0 + rng.integers(1, w // 2))
    m[k, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.uniform(0.3, 1.0)
  return m


def brute_force(atomic, art, X, Y, Z, scope):
  region, ratio, pix = {}, {}, {}
  for n in NAMES:
    r = np.zeros(art.shape, bool)
    for a in fict.atomic_descendants(n):
      r |= atomic[fict.atomic_index(a)]
    region[n] = r
    pix[n] = int(sum(1 for y in range(art.shape[0]) for x in range(art.shape[1]) if r[y, x] and art[y, x]))
    size = int(r.sum())
    ratio[n] = pix[n] / size if size else 0.0
  rank = {}
  groups = ([[n for n in NAMES if fict.is_atomic(n)], [n for n in NAMES if not fict.is_atomic(n)]]
            if scope == "separate" else [list(NAMES)])
  for g in groups:
    for n in g:  # 1 + concepts ranked before n: larger ratio, or equal ratio earlier in FICT order
      rank[n] = 1 + sum(1 for m in g if ratio[m] > ratio[n] or (ratio[m] == ratio[n] and NAMES.index(m) < NAMES.index(n)))
  flags = {n: (rank[n] <= X and ratio[n] * 100 >= Y - 1e-9 and pix[n] >= Z and region[n].any())
           or n in fict.DEFAULT_ARTIFACT_PARENTS for n in NAMES}
  boxes = {}
  for p in fict.PARENTS:
    ys, xs = np.nonzero(region[p])
    boxes[p] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if xs.size else [-1] * 4
  return region, ratio, pix, rank, flags, boxes


@pytest.mark.parametrize("seed,X,Y,Z,scope", [(0, 50, 10, 50, "separate"), (1, 50, 10, 50, "joint"),
                                              (2, 20, 30, 5, "separate"), (3, 184, 0, 0, "joint")])
def test_step2_matches_brute_force(seed, X, Y, Z, scope):
  rng = np.random.default_rng(seed)
  atomic = random_atomic(rng)
  art = rng.random(atomic.shape[1:]) < 0.3
  art[:10] = True
  th = artifacts.Thresholds(max_rank=X, min_ratio=Y, min_pixels=Z, rank_scope=scope)
  got = artifacts.step2_from_atomic(atomic, art, th)
  region, ratio, pix, rank, flags, boxes = brute_force(atomic, art, X, Y, Z, scope)
  assert [int(v) for v in got["region_pixels"]] == [int(region[n].sum()) for n in NAMES]
  assert [int(v) for v in got["artifact_pixels"]] == [pix[n] for n in NAMES]
  assert np.allclose(got["coverage"], [ratio[n] for n in NAMES])
  assert [int(v) for v in got["rank"]] == [rank[n] for n in NAMES]
  assert [bool(v) for v in got["artifact_existing"]] == [flags[n] for n in NAMES]
  for n in fict.DEFAULT_ARTIFACT_PARENTS:
    assert got["artifact_existing"][NAMES.index(n)]
  allm = regions.all_from_atomic(atomic)
  pb = artifacts.parent_boxes(allm)
  assert [list(map(int, b)) for b in pb] == [list(map(int, boxes[p])) for p in fict.PARENTS]
  ram = artifacts.regional_artifact_masks(atomic, art)
  assert np.array_equal(ram, atomic & art[None])


def test_bage_boxes_keep_rule_matches_brute_force():
  rng = np.random.default_rng(7)
  atomic = random_atomic(rng, 64, 64)
  art = rng.random((64, 64)) < 0.5
  existing = rng.random(len(fict.ATOMIC)) < 0.5
  rule = bage.BageRule(n_boxes=20, min_concepts=3, min_cover=0.5, seed=3)
  out = bage.bage_boxes(atomic, art, existing, rule, key="img/001.png")
  again = bage.bage_boxes(atomic, art, existing, rule, key="img/001.png")
  other = bage.bage_boxes(atomic, art, existing, rule, key="img/002.png")
  assert np.array_equal(out["bage_boxes"], again["bage_boxes"])  # seeded per image
  assert not np.array_equal(out["bage_boxes"], other["bage_boxes"])
  b = out["bage_boxes"]
  assert b.shape == (20, 4) and (b[:, 0] >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 0] < b[:, 2]).all()
  for i, (x0, y0, x1, y1) in enumerate(b):
    inbox = np.zeros((64, 64), bool)
    inbox[y0:y1, x0:x1] = True
    conc = []
    for k in range(len(fict.ATOMIC)):
      reg = atomic[k] & art
      if existing[k] and reg.any() and (reg & inbox).sum() >= 0.5 * reg.sum():
        conc.append(k)
    assert list(np.flatnonzero(out["bage_concepts"][i])) == conc
    assert out["bage_keep"][i] == (len(conc) >= 3)
  assert out["bage_keep"].any()
