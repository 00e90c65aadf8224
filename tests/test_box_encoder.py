"""RoIAlign against a NumPy transcription of the Mask R-CNN definition; Box Encoder shapes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fifa_jax.models.box_encoder import BoxEncoder, BoxEncoderConfig, roi_align


def _bilinear(f: np.ndarray, y: float, x: float) -> np.ndarray:
  h, w, _ = f.shape
  if y < -1.0 or y > h or x < -1.0 or x > w:  # sample falls off the map: contributes 0
    return np.zeros(f.shape[-1])
  y, x = max(y, 0.0), max(x, 0.0)
  y0, x0 = int(y), int(x)
  if y0 >= h - 1:
    y0 = y1 = h - 1
    y = float(y0)
  else:
    y1 = y0 + 1
  if x0 >= w - 1:
    x0 = x1 = w - 1
    x = float(x0)
  else:
    x1 = x0 + 1
  ly, lx = y - y0, x - x0
  return ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1]
          + ly * (1 - lx) * f[y1, x0] + ly * lx * f[y1, x1])


def roi_align_reference(f, box, out, scale, ratio, aligned):
  """One box on one [H, W, C] map, written loop by loop from the paper's definition."""
  off = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (float(v) * scale - off for v in box)
  rw, rh = x2 - x1, y2 - y1
  if not aligned:
    rw, rh = max(rw, 1.0), max(rh, 1.0)
  bh, bw = rh / out, rw / out
  gh = ratio if ratio > 0 else math.ceil(rh / out)
  gw = ratio if ratio > 0 else math.ceil(rw / out)
  res = np.zeros((out, out, f.shape[-1]))
  for ph in range(out):
    for pw in range(out):
      acc = np.zeros(f.shape[-1])
      for iy in range(gh):
        y = y1 + ph * bh + (iy + 0.5) * bh / gh
        for ix in range(gw):
          x = x1 + pw * bw + (ix + 0.5) * bw / gw
          acc += _bilinear(f, y, x)
      res[ph, pw] = acc / max(gh * gw, 1)
  return res


BOXES = np.array([[
  [3.0, 5.0, 40.0, 27.0],  # inside
  [0.0, 0.0, 64.0, 48.0],  # the whole image, touching every border
  [-10.0, -6.0, 12.0, 9.0],  # hanging off the top-left corner
  [50.0, 30.0, 80.0, 70.0],  # past the bottom-right corner
  [20.0, 20.0, 20.0, 20.0],  # degenerate
  [70.0, 60.0, 90.0, 75.0],  # entirely outside
  [7.3, 11.9, 8.1, 13.2],  # smaller than a feature cell
]], np.float32)


@pytest.mark.parametrize("ratio,aligned,scale", [(2, True, 0.25), (-1, True, 0.25),
                                                 (-1, True, 0.125), (2, False, 0.25),
                                                 (-1, False, 0.5)])
def test_roi_align_matches_reference(ratio, aligned, scale):
  rng = np.random.default_rng(0)
  h, w = int(48 * scale), int(64 * scale)
  feats = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  boxes = np.concatenate([BOXES, BOXES[:, ::-1] + 1.5], 0)
  out = 4
  # Enough sample slots for the largest box here (an adaptive grid is data-dependent).
  got = np.asarray(roi_align(jnp.asarray(feats), jnp.asarray(boxes), out, scale, ratio, aligned,
                             max_samples=8))
  assert got.shape == (2, boxes.shape[1], out, out, 3)
  want = np.asarray([[roi_align_reference(feats[b], boxes[b, k], out, scale, ratio, aligned)
                       for k in range(boxes.shape[1])] for b in range(2)])
  print(f"roi_align max abs diff {np.abs(got - want).max():.1e} (max |out| {np.abs(want).max():.2f})")
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_roi_align_default_slots_cover_boxes_inside_the_image():
  feats = np.random.default_rng(1).normal(size=(1, 12, 16, 2)).astype(np.float32)
  boxes = np.array([[[0.0, 0.0, 64.0, 48.0], [5.0, 3.0, 61.0, 47.0]]], np.float32)
  got = np.asarray(roi_align(jnp.asarray(feats), jnp.asarray(boxes), 3, 0.25, -1))
  for k in range(2):
    want = roi_align_reference(feats[0], boxes[0, k], 3, 0.25, -1, True)
    np.testing.assert_allclose(got[0, k], want, atol=2e-6, rtol=0)


def test_roi_align_is_differentiable_and_jits():
  feats = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 8, 2)), jnp.float32)
  boxes = jnp.asarray([[[4.0, 4.0, 20.0, 28.0]]])
  fn = jax.jit(lambda f: roi_align(f, boxes, 2, 0.25, 2).sum())
  g = jax.grad(fn)(feats)
  # Each output averages 4 samples with bilinear weights summing to 1: total mass = 4 bins.
  np.testing.assert_allclose(float(g.sum()), 4.0 * 2, rtol=1e-6)


@pytest.mark.slow
def test_box_encoder_shapes_and_box_sensitivity():
  cfg = BoxEncoderConfig.tiny()
  enc = BoxEncoder(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  states = [jnp.asarray(rng.normal(size=(2, 1 + 16, cfg.vit_width)), jnp.float32) for _ in range(4)]
  boxes = jnp.asarray([[[0, 0, 32, 32], [16, 8, 60, 40], [0, 0, 64, 64]]] * 2, jnp.float32)
  out = jax.jit(lambda s, bx: enc(s, bx, (64, 64)))(states, boxes)
  assert out.shape == (2, 3, cfg.out_dim) and bool(jnp.isfinite(out).all())
  assert float(jnp.abs(out[:, 0] - out[:, 1]).max()) > 1e-3
  # Pyramid strides: 16x16, 8x8, 4x4, 2x2 maps from a 4x4 grid.
  grids = [lvl(s[:, 1:].reshape(2, 4, 4, -1)).shape[1] for lvl, s in zip(enc.levels, states)]
  assert grids == [16, 8, 4, 2]
