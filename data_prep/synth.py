"""Synthetic forgeries with known artifact masks, from real faces available offline.

`fifa data synth --out DIR --n N` (= `python -m data_prep.cli synth`, run in .venv-prep
because placing a manipulation on a facial feature needs MediaPipe's landmarks).

Base faces (no download at run time; see docs/data.md):
  astronaut          skimage.data.astronaut() (512x512, NASA, public domain)
  tom_hanks          insightface 2.1 wheel, data/images/Tom_Hanks_54745.png (112x112)
  t1_a, t1_b, t1_c   three faces cropped from the same wheel's group photo t1.jpg
                     (fixed crops; MediaPipe's full-range detector finds these three)
Each sample is a *variant* of a base face: a random square crop around the face,
scale, small rotation, optional horizontal flip and a colour change (brightness,
contrast, gamma, white balance), resized to `size` x `size`.

A fake is a variant with 1-3 local manipulations on facial features placed by the
landmarks: recolour (HSV shift), blur, warp (bulge/pinch), seamless-cloned patch
from another face of the same split (cv2.seamlessClone after a landmark similarity
alignment), noise, skin smoothing, sharpening.  Its **known artifact mask** is every
pixel the manipulations changed (grey |fake - real| >= 1, feathered edges included):
outside the manipulated regions the fake is bit-identical to its real source, so
this is the manipulation's exact footprint.  Step 1 (top 5% of the same grey
difference, never below 1) therefore gives a subset of it.

Splits (no face leaks across splits): with >= 3 base faces the split is by
*identity*: train = astronaut, tom_hanks, t1_a; dev = t1_b; test = t1_c.  With
fewer bases (t1.jpg unavailable) it falls back to *variant* splits (each variant is
its own source identity, so no picture is shared across splits, but the same
person is): the manifest's `split_by` says which was used.

Output (everything PNG, lossless, so a real/fake pair differs only where manipulated):
  OUT/real/<split>/<id>.png    real faces (Det./Cls. "real", technique "real")
  OUT/fake/<split>/<id>.png    forgeries (technique "synthetic", attribute manipulation)
  OUT/mask/<split>/<id>.png    the known artifact mask of fake/<split>/<id>.png (255 = artifact)
  OUT/pair/<split>/<id>.png    the real source of that fake (for Step 1: --reals OUT/pair)
  OUT/manifest.jsonl           one line per image (fifa data build reads it)
Deterministic for a given (seed, n, n_real, size): a rerun rewrites the same files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data_prep import mesh
from data_prep.imageio import save_png

SPLITS = ("train", "dev", "test")
IDENTITY_SPLIT = {"astronaut": "train", "tom_hanks": "train", "t1_a": "train", "t1_b": "dev", "t1_c": "test"}
# (centre x, centre y, half side) of the three faces in insightface's t1.jpg (1280x886).
T1_CROPS = {"t1_a": (112, 339, 127), "t1_b": (514, 350, 149), "t1_c": (781, 417, 139)}
MIN_DIFF = 1.0  # grey levels: as Step 1's min_diff, so Step 1's mask is a subset of the known one
OPS = ("recolour", "blur", "warp", "clone", "noise", "smooth", "sharpen")
# Parameter ranges per strength.  "subtle" artifacts resemble what face editors leave
# and are barely visible at 128 px (blur, smoothing and Poisson clones vanish there);
# "visible" ones are sized to be seen at the cpu preset's 128-px input, on a region
# grown less (so fewer concepts per fake), for a from-scratch model trained for
# minutes (`make demo`).  Ranges are (low, high) of a uniform draw; `grow` is x face size.
STRENGTHS = {
    "subtle": {"ops": OPS, "grow": 0.06, "hue": (6, 18), "sat": (0.6, 1.6), "val": (0.8, 1.2),
               "blur": (1.5, 3.5), "noise": (6, 14), "smooth": (7, 12), "sharpen": (1.5, 3.0),
               "warp": (0.25, 0.45)},
    "visible": {"ops": ("recolour", "noise", "sharpen"), "grow": 0.02, "hue": (25, 45),
                "sat": (1.4, 2.0), "val": (0.75, 1.25), "blur": (5.0, 8.0), "noise": (40, 60),
                "smooth": (11, 16), "sharpen": (5.0, 8.0), "warp": (0.5, 0.7)},
}


# ---------------------------------------------------------------------------
# Base faces


def base_faces(include_t1: bool = True) -> dict[str, np.ndarray]:
  """{name: HxWx3 uint8 RGB} of the offline real faces."""
  # lazy: the samples pull in skimage, unused when faces are given
  from data_prep import samples
  out = {"astronaut": samples.astronaut()}
  try:
    out["tom_hanks"] = samples.tom_hanks()
  except Exception as e:  # noqa: BLE001 - the wheel may be missing offline
    print(f"synth: warning: no Tom Hanks sample ({e})", file=sys.stderr)
  if include_t1:
    wheels = sorted((samples.cache_dir() / "wheels").glob("insightface-*.whl"))
    if wheels:
      from PIL import Image  # lazy: PIL only to read the wheel's bundled faces
      with zipfile.ZipFile(wheels[-1]) as z:
        t1 = np.asarray(Image.open(io.BytesIO(z.read("insightface/data/images/t1.jpg"))).convert("RGB"))
      for name, (cx, cy, s) in T1_CROPS.items():
        out[name] = np.ascontiguousarray(t1[max(0, cy - s):cy + s, max(0, cx - s):cx + s])
    else:
      print("synth: warning: insightface wheel not cached; no t1.jpg faces (variant splits)", file=sys.stderr)
  return out


# ---------------------------------------------------------------------------
# Variants


def _face_box(lm: np.ndarray) -> tuple[float, float, float, float]:
  x, y = lm[:, 0], lm[:, 1]
  return float(x.min()), float(y.min()), float(x.max()), float(y.max())


# Crop side / face size: "loose" shows the face at 1/3 to 2/3 of the picture; "tight"
# at about 2/3 to 7/8, as aligned face crops (DFFD, FaRL) are, so that small
# concepts stay several mask pixels wide at a model's low input resolution.
CROPS = {"loose": (1.5, 3.0), "tight": (1.15, 1.5)}


def make_variant(rgb: np.ndarray, lm: np.ndarray, rng: np.random.Generator, size: int,
                 crop: str = "loose") -> tuple[np.ndarray, dict]:
  """A random crop / scale / rotation / flip / colour variant of a face, size x size."""
  h, w = rgb.shape[:2]
  x0, y0, x1, y1 = _face_box(lm)
  fs = max(x1 - x0, y1 - y0)
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  f_lo, f_hi = CROPS[crop]
  lo, hi = min(f_lo * fs, min(h, w)), min(f_hi * fs, min(h, w))
  side = float(rng.uniform(min(lo, hi), hi))
  # Crop centre: jittered, but the face box stays inside where the picture allows.
  jx, jy = rng.uniform(-0.12, 0.12, 2) * side
  ox = float(np.clip(cx + jx - side / 2, 0, w - side))
  oy = float(np.clip(cy + jy - side / 2, 0, h - side))
  angle = float(rng.uniform(-7, 7))
  scale = size / side
  m = cv2.getRotationMatrix2D((ox + side / 2, oy + side / 2), angle, scale)
  m[:, 2] += np.array([size / 2, size / 2]) - np.array([ox + side / 2, oy + side / 2])
  out = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REFLECT_101)
  flip = bool(rng.random() < 0.5)
  if flip:
    out = out[:, ::-1]
  # Colour: contrast, brightness, gamma, white balance.
  f = out.astype(np.float32) / 255.0
  contrast, bright, gamma = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06), rng.uniform(0.85, 1.15)
  gains = rng.uniform(0.93, 1.07, 3).astype(np.float32)
  f = np.clip((f - 0.5) * contrast + 0.5 + bright, 0, 1) ** gamma * gains
  out = np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8)
  info = {"crop": [round(ox, 1), round(oy, 1), round(side, 1)], "angle": round(angle, 2), "flip": flip,
          "contrast": round(float(contrast), 3), "brightness": round(float(bright), 3),
          "gamma": round(float(gamma), 3), "gains": [round(float(g), 3) for g in gains]}
  return np.ascontiguousarray(out), info


# ---------------------------------------------------------------------------
# Regions (landmark polygons; subject's right, left by MIRROR)


def _hull(lm: np.ndarray, idx) -> np.ndarray:
  return cv2.convexHull(lm[list(idx), :2].astype(np.float32)).astype(np.int32)


def _region_sets() -> dict[str, list[int]]:
  r_eye = mesh.EYE + mesh.BROW
  return {
      "right eye area": r_eye, "left eye area": mesh.mirror(r_eye),
      "mouth": mesh.LIP_OUT_UP + mesh.LIP_OUT_LO,
      "nose": mesh.sym_polygon(mesh.NOSE_CHAIN),
      "right cheek": mesh.CHEEK_R, "left cheek": mesh.mirror(mesh.CHEEK_R),
      "forehead": mesh.sym_polygon(mesh.FOREHEAD_TOP_R) + mesh.sym_polygon(mesh.FOREHEAD_BOTTOM_R),
      "chin": mesh.sym_polygon(mesh.CHIN_CHAIN),
      "right eyebrow": mesh.BROW, "left eyebrow": mesh.mirror(mesh.BROW),
  }


REGIONS = _region_sets()


def region_alpha(lm: np.ndarray, name: str, shape: tuple[int, int], grow: float = 0.06) -> np.ndarray:
  """A feathered [0, 1] mask over a landmark region, grown by `grow` x face size."""
  h, w = shape
  m = np.zeros((h, w), np.uint8)
  cv2.fillPoly(m, [_hull(lm, REGIONS[name])], 255)
  x0, y0, x1, y1 = _face_box(lm)
  r = max(1, int(round(grow * max(x1 - x0, y1 - y0))))
  m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
  a = cv2.GaussianBlur(m.astype(np.float32) / 255.0, (0, 0), max(1.0, r / 2))
  return a


# ---------------------------------------------------------------------------
# Manipulations: each returns the manipulated image (full size) and its support mask.


def _blend(img, manip, alpha):
  a = alpha[..., None]
  return np.clip(manip.astype(np.float32) * a + img.astype(np.float32) * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def op_recolour(img, alpha, rng, strength=STRENGTHS["subtle"], **_):
  hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
  dh = rng.choice([-1, 1]) * rng.uniform(*strength["hue"])  # OpenCV hue is 0..180
  hsv[..., 0] = (hsv[..., 0] + dh) % 180
  hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*strength["sat"]), 0, 255)
  hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(*strength["val"]), 0, 255)
  manip = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
  return _blend(img, manip, alpha), alpha >= 0.5, {"hue": round(float(dh), 1)}


def op_blur(img, alpha, rng, size, strength=STRENGTHS["subtle"], **_):
  s = float(rng.uniform(*strength["blur"])) * size / 256
  return _blend(img, cv2.GaussianBlur(img, (0, 0), s), alpha), alpha >= 0.5, {"sigma": round(s, 2)}


def op_noise(img, alpha, rng, strength=STRENGTHS["subtle"], **_):
  s = float(rng.uniform(*strength["noise"]))
  manip = np.clip(img.astype(np.float32) + rng.normal(0, s, img.shape), 0, 255)
  return _blend(img, manip, alpha), alpha >= 0.5, {"sigma": round(s, 1)}


def op_smooth(img, alpha, rng, strength=STRENGTHS["subtle"], **_):
  d = int(rng.integers(*strength["smooth"]))
  manip = cv2.bilateralFilter(img, d, 60, 8)
  manip = cv2.bilateralFilter(manip, d, 60, 8)
  return _blend(img, manip, alpha), alpha >= 0.5, {"d": d}


def op_sharpen(img, alpha, rng, size, strength=STRENGTHS["subtle"], **_):
  amount = float(rng.uniform(*strength["sharpen"]))
  blur = cv2.GaussianBlur(img, (0, 0), 1.5 * size / 256)
  manip = cv2.addWeighted(img, 1 + amount, blur, -amount, 0)
  return _blend(img, manip, alpha), alpha >= 0.5, {"amount": round(amount, 2)}


def op_warp(img, alpha, rng, strength=STRENGTHS["subtle"], **_):
  support = alpha >= 0.5
  ys, xs = np.nonzero(support)
  cx, cy = xs.mean(), ys.mean()
  radius = 0.6 * max(np.ptp(xs), np.ptp(ys)) + 1
  k = float(rng.choice([-1, 1]) * rng.uniform(*strength["warp"]))  # > 0 bulge, < 0 pinch
  h, w = img.shape[:2]
  gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
  dx, dy = gx - cx, gy - cy
  r = np.sqrt(dx * dx + dy * dy) / radius
  f = np.where(r < 1, 1 - k * (1 - r) ** 2, 1).astype(np.float32)
  manip = cv2.remap(img, cx + dx * f, cy + dy * f, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
  a = alpha * (r < 1)
  return _blend(img, manip, a), a >= 0.5, {"k": round(k, 2)}


def op_clone(img, alpha, rng, lm, donor=None, strength=STRENGTHS["subtle"], **_):
  """Poisson-blend the same region from a donor face aligned by the landmarks."""
  if donor is None:
    return op_recolour(img, alpha, rng, strength)
  d_rgb, d_lm = donor
  m, _ = cv2.estimateAffinePartial2D(d_lm[:, :2].astype(np.float32), lm[:, :2].astype(np.float32))
  if m is None:
    return op_recolour(img, alpha, rng, strength)
  h, w = img.shape[:2]
  warped = cv2.warpAffine(d_rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
  mask = (alpha >= 0.5).astype(np.uint8) * 255
  mask[:3], mask[-3:], mask[:, :3], mask[:, -3:] = 0, 0, 0, 0  # seamlessClone needs a margin
  x, y, bw, bh = cv2.boundingRect(mask)
  if bw < 4 or bh < 4:
    return op_recolour(img, alpha, rng, strength)
  center = (x + bw // 2, y + bh // 2)
  src = cv2.cvtColor(warped, cv2.COLOR_RGB2BGR)
  dst = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
  out = cv2.seamlessClone(src, dst, mask, center, cv2.NORMAL_CLONE)
  return cv2.cvtColor(out, cv2.COLOR_BGR2RGB), mask > 0, {}


OP_FN = {"recolour": op_recolour, "blur": op_blur, "warp": op_warp, "clone": op_clone,
         "noise": op_noise, "smooth": op_smooth, "sharpen": op_sharpen}


def manipulate(real: np.ndarray, lm: np.ndarray, rng: np.random.Generator, donor=None,
               n_ops: int | None = None, strength: str = "subtle") -> tuple[np.ndarray, np.ndarray, list[dict]]:
  """(fake, known artifact mask, ops) for a real face with its landmarks."""
  size = real.shape[0]
  st = STRENGTHS[strength]
  n_ops = int(rng.integers(1, 4)) if n_ops is None else n_ops
  names = list(rng.choice(list(REGIONS), size=n_ops, replace=False))
  img, support_any, ops = real.copy(), np.zeros(real.shape[:2], bool), []
  for name in names:
    op = str(rng.choice(st["ops"]))
    alpha = region_alpha(lm, name, real.shape[:2], grow=st["grow"])
    img, sup, params = OP_FN[op](img, alpha, rng, size=size, lm=lm, donor=donor, strength=st)
    support_any |= (alpha > 0) | sup
    ops.append({"op": op, "region": name, **params})
  # Pixels outside every op's support are bit-identical to the real, so the pixels that
  # changed are exactly the manipulation's footprint (feathered edges included).
  grey = np.abs(img.astype(np.int16) - real.astype(np.int16)).astype(np.float32) @ \
      np.array([0.299, 0.587, 0.114], np.float32)
  mask = grey >= MIN_DIFF
  assert not (mask & ~support_any).any()
  return img, mask, ops


# ---------------------------------------------------------------------------
# The set


@dataclasses.dataclass
class SynthConfig:
  n: int = 24               # fakes
  n_real: int | None = None  # reals (default: max(3, n // 2))
  size: int = 256
  seed: int = 0
  split_by: str = "auto"    # "identity" (needs the t1.jpg faces), "variant", or "auto"
  max_ops: int = 3          # manipulations per fake: 1..max_ops (fewer: shorter AGE answers)
  crop: str = "loose"       # "loose" or "tight" (CROPS): how much of the picture the face fills
  strength: str = "subtle"  # "subtle" or "visible" (STRENGTHS): how strong the manipulations are


def allocate(n: int, splits=SPLITS, frac=(0.7, 0.15, 0.15)) -> list[str]:
  """Split names for n items: dev and test get round(15%) each, at least 1 when n >= 3."""
  k = [0, 0, 0]
  for i in (1, 2):
    k[i] = max(1 if n >= 3 else 0, int(round(frac[i] * n)))
  k[0] = n - k[1] - k[2]
  return [s for s, c in zip(splits, k) for _ in range(c)]


class _Faces:
  """Base faces with their landmarks and a landmarker for variants."""

  def __init__(self, seed_faces: dict[str, np.ndarray]):
    # lazy: MediaPipe loads only when variants are made
    from data_prep.landmarks import Landmarker
    self.lmk = Landmarker(flip_average=False)
    self.faces = {}
    for name, rgb in seed_faces.items():
      try:
        self.faces[name] = (rgb, self.lmk.detect(rgb).landmarks)
      except Exception as e:  # noqa: BLE001 - a base without a face is skipped, loudly
        print(f"synth: warning: base face {name} skipped ({e})", file=sys.stderr)

  def variant(self, name: str, rng: np.random.Generator, size: int, crop: str = "loose"):
    rgb, lm = self.faces[name]
    for _ in range(8):  # a crop can lose the face: try another draw
      out, info = make_variant(rgb, lm, rng, size, crop)
      try:
        return out, self.lmk.detect(out).landmarks, info
      except Exception:  # noqa: BLE001
        continue
    raise RuntimeError(f"no usable variant of {name} in 8 draws")


def synthesize(out_dir: str | os.PathLike, cfg: SynthConfig | None = None, progress: bool = True) -> dict:
  """Write the set (layout in the module docstring); returns a summary."""
  cfg = cfg or SynthConfig()
  out = Path(out_dir)
  n_real = cfg.n_real if cfg.n_real is not None else max(3, cfg.n // 2)
  faces = _Faces(base_faces())
  if not faces.faces:
    raise RuntimeError("no base face with a detectable face")
  split_by = cfg.split_by
  by_split = {s: [b for b in faces.faces if IDENTITY_SPLIT.get(b) == s] for s in SPLITS}
  if split_by == "auto":
    split_by = "identity" if all(by_split.values()) else "variant"
  if split_by == "identity" and not all(by_split.values()):
    raise RuntimeError("split_by=identity needs the t1.jpg faces (dev and test identities)")
  if split_by == "variant":
    by_split = {s: list(faces.faces) for s in SPLITS}

  items = []
  donors: dict[str, list] = {s: [] for s in SPLITS}
  plan = [("real", i, s) for i, s in enumerate(allocate(n_real))] + \
         [("fake", i, s) for i, s in enumerate(allocate(cfg.n))]
  bar = tqdm(total=len(plan), desc="synth", unit="img", disable=not progress, file=sys.stderr)
  for kind, i, split in plan:
    rng = np.random.default_rng([cfg.seed, 0 if kind == "real" else 1, i])
    bases = by_split[split]
    base = bases[i % len(bases)]
    rgb, lm, vinfo = faces.variant(base, rng, cfg.size, cfg.crop)
    vid = f"{base}#{kind}{i}"
    rel = f"{kind}/{split}/{i:05d}.png"
    item = {"image_id": f"synth-{kind}-{split}-{i:05d}", "image": rel, "split": split,
            "label": kind, "identity": base if split_by == "identity" else vid, "base": base,
            "variant": vinfo}
    if kind == "real":
      save_png(out / rel, rgb)
      item.update(technique="real", source=base)
      donors[split].append((rgb, lm))
    else:
      pool = donors[split] or [(rgb, lm)]
      donor = pool[int(rng.integers(len(pool)))]
      fake, mask, ops = manipulate(rgb, lm, rng, donor=donor,
                                   n_ops=int(rng.integers(1, cfg.max_ops + 1)), strength=cfg.strength)
      if not mask.any():  # a no-op draw (e.g. blur on a flat patch): force a visible change
        fake, mask, ops2 = manipulate(rgb, lm, rng, donor=None, n_ops=1, strength=cfg.strength)
        ops += ops2
      save_png(out / rel, fake)
      save_png(out / "mask" / split / f"{i:05d}.png", mask)
      save_png(out / "pair" / split / f"{i:05d}.png", rgb)
      item.update(technique="synthetic", source="synthetic", ops=ops,
                  mask=f"mask/{split}/{i:05d}.png", pair=f"pair/{split}/{i:05d}.png",
                  artifact_fraction=round(float(mask.mean()), 4))
    items.append(item)
    bar.update(1)
  bar.close()
  faces.lmk.close()
  tmp = out / ".manifest.jsonl.tmp"
  tmp.write_text("".join(json.dumps(it) + "\n" for it in items))
  os.replace(tmp, out / "manifest.jsonl")
  counts = {s: {k: sum(1 for it in items if it["split"] == s and it["label"] == k) for k in ("real", "fake")}
            for s in SPLITS}
  summary = {"out": str(out), "size": cfg.size, "seed": cfg.seed, "split_by": split_by,
             "strength": cfg.strength, "crop": cfg.crop, "max_ops": cfg.max_ops,
             "bases": list(faces.faces), "counts": counts}
  (out / "synth.json").write_text(json.dumps(summary, indent=2))
  return summary
