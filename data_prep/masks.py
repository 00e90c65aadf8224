"""Bit-packed mask stacks: the annotator's in-memory and on-disk form of Region Masks.

A stack of N HxW boolean masks is stored as uint8 (N, H, ceil(W/8)), packed along
the last axis with `np.packbits` (big bit order: the first pixel of a row is the
high bit of its first byte).  ORs, ANDs and pixel counts work on the packed bytes,
eight pixels at a time.  Only numpy is needed here (the dataset builder can import
this module from the training environment).
"""

from __future__ import annotations

import numpy as np


def pack(masks: np.ndarray) -> np.ndarray:
  """(..., H, W) bool -> (..., H, ceil(W/8)) uint8."""
  return np.packbits(np.asarray(masks, bool), axis=-1)


def unpack(packed: np.ndarray, width: int) -> np.ndarray:
  """(..., H, ceil(W/8)) uint8 -> (..., H, W) bool."""
  return np.unpackbits(packed, axis=-1, count=width).view(bool)


_M1, _M2, _M4 = (np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F))
_H01 = np.uint64(0x0101010101010101)


def popcount(packed: np.ndarray) -> np.ndarray:
  """Number of set bits in each mask of a packed stack: (N, ...) uint8 -> (N,) int64."""
  a = np.ascontiguousarray(packed).reshape(packed.shape[0], -1)
  pad = (-a.shape[1]) % 8
  if pad:
    a = np.pad(a, ((0, 0), (0, pad)))
  x = a.view(np.uint64)
  x = x - ((x >> np.uint64(1)) & _M1)
  x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
  x = (x + (x >> np.uint64(4))) & _M4
  return ((x * _H01) >> np.uint64(56)).sum(axis=1, dtype=np.int64)


def bbox(packed_mask: np.ndarray, width: int) -> tuple[int, int, int, int] | None:
  """[x0, y0, x1, y1) of one packed HxW mask (pixel edges, x1/y1 exclusive); None if empty."""
  rows = np.flatnonzero(packed_mask.any(axis=1))
  if rows.size == 0:
    return None
  cols = np.flatnonzero(np.unpackbits(np.bitwise_or.reduce(packed_mask[rows[0]:rows[-1] + 1], axis=0),
                                      count=width))
  return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def pack_boxes(masks) -> tuple[np.ndarray, np.ndarray]:
  """Sparse on-disk form of masks given on boxes (data_prep.sparse.Sp, tight):
  (boxes (N, 4) int32 [x0, y0, x1, y1) in pixel edges, -1s when empty;
   bits uint8 (n,): for each mask in turn, np.packbits of its box along rows, raveled)."""
  boxes = np.full((len(masks), 4), -1, np.int32)
  chunks = []
  for k, m in enumerate(masks):
    if m.a.size:
      h, w = m.a.shape
      boxes[k] = (m.x0, m.y0, m.x0 + w, m.y0 + h)
      chunks.append(np.packbits(m.a, axis=-1).ravel())
  bits = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
  return boxes, bits


def unpack_boxes(boxes: np.ndarray, bits: np.ndarray, height: int, width: int) -> np.ndarray:
  """(N, H, W) bool from pack_boxes' (boxes, bits)."""
  out = np.zeros((len(boxes), height, width), bool)
  pos = 0
  for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.int64)):
    if x0 < 0:
      continue
    h, wb = y1 - y0, (x1 - x0 + 7) // 8
    rows = bits[pos:pos + h * wb].reshape(h, wb)
    out[k, y0:y1, x0:x1] = np.unpackbits(rows, axis=-1, count=x1 - x0).view(bool)
    pos += h * wb
  if pos != bits.size:
    raise ValueError(f"packed mask bits: {bits.size} bytes for boxes that need {pos}")
  return out
