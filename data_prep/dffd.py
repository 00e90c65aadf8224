"""DFFD ingestion: select FiFa's subsets of a local DFFD copy (Table 16) and stage them
for the annotator and `fifa data build`.  Standard library only.

Expected layout of a DFFD copy (Dang et al. 2020; folder names matched without
regard to case; images found recursively, so FF++ per-video folders work):

  DFFD/
    ffhq/            {train,validation,test}/...   real          -> FFHQ
    celeba/ or celeba_2w/                         real          -> CelebA
    youtube/                                      real          -> Youtube (FF++ originals)
    Deepfakes/  FaceSwap/                         identity swapping
    Face2Face/  NeuralTextures/                   expression swapping
    faceapp/    stargan/                          attribute manipulation
    pggan_v1/  pggan_v2/                          entire face synthesis -> PGGAN
    stylegan_celeba/  stylegan_ffhq/              entire face synthesis -> StyleGAN
  Split folders: train, validation (or val, dev), test.  Other folders are reported
  and ignored.

Selection: for each technique and split, Table 16's size (`TABLE16`), capped by what
the copy holds; when a technique has several folders (PGGAN v1/v2, StyleGAN
CelebA/FFHQ) the size is shared between them, a short folder's remainder going to the
others.  Within a folder, files are sorted and shuffled with `seed`, so a selection is
reproducible.  Splits are DFFD's own (FF++ is split by video there), so no source
video or image is in two splits.

Artifact masks (only FaceAPP gets Loc./TOE/AGE, as in the paper): DFFD does not pair
FaceAPP images with their FFHQ sources, so give either
  --faceapp-reals DIR   the real source of each FaceAPP image at the same path relative
                        to faceapp/ (Step 1 computes the artifact mask), or
  --faceapp-masks DIR   artifact masks at the same relative paths.
Without them (or for images without a match) FaceAPP images get Det./Cls. only.

Output (STAGE):
  images/<Technique>/<split>/<rel>   symbolic links to the selected DFFD files
  pair/FaceAPP/<split>/<rel>         links to the FaceAPP real sources (--faceapp-reals)
  mask/FaceAPP/<split>/<rel>         links to the FaceAPP masks (--faceapp-masks)
  manifest.jsonl                     for `fifa data build` (annotate: true only where
                                     an annotation is needed: FaceAPP with a source or mask)
  plan.json                          Table 16 size, available and selected per technique/split
  commands.sh                        the `fifa prep batch` and `fifa data build` commands
"""

from __future__ import annotations

import json
import os
import random
import shlex
from pathlib import Path

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "dev", "test")
SPLIT_DIRS = {"train": "train", "validation": "dev", "val": "dev", "dev": "dev", "test": "test"}

# folder name (lower case) -> technique (records.TECHNIQUE_CATEGORY key)
FOLDERS = {
    "ffhq": "FFHQ", "celeba": "CelebA", "celeba_2w": "CelebA", "youtube": "Youtube",
    "deepfakes": "Deepfakes", "faceswap": "FaceSwap", "face2face": "Face2Face",
    "neuraltextures": "NeuralTextures", "faceapp": "FaceAPP", "stargan": "StarGAN",
    "pggan_v1": "PGGAN", "pggan_v2": "PGGAN", "pggan": "PGGAN",
    "stylegan_celeba": "StyleGAN", "stylegan_ffhq": "StyleGAN", "stylegan": "StyleGAN",
}
REAL = {"FFHQ", "CelebA", "Youtube"}

# Table 16: (train, dev, test) images per technique for Det./Cls.
TABLE16 = {
    "FFHQ": (30000, 3000, 3000), "CelebA": (30000, 3000, 3000), "Youtube": (20000, 2000, 2000),
    "Deepfakes": (10000, 1000, 1000), "FaceSwap": (10000, 1000, 1000),
    "Face2Face": (10000, 1000, 1000), "NeuralTextures": (10000, 1000, 1000),
    "FaceAPP": (10000, 439, 1000), "StarGAN": (10000, 1000, 1000),
    "PGGAN": (10000, 1000, 1000), "StyleGAN": (10000, 1000, 1000),
}


class DffdError(ValueError):
  """An unusable DFFD copy; the message names the folder and the problem."""


def _images(folder: Path) -> list[Path]:
  out = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs.sort()
    out += [Path(root) / f for f in sorted(files) if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")]
  return out


def scan(root: str | os.PathLike) -> tuple[dict, list[str]]:
  """({technique: {split: {folder name: [files]}}}, ignored folder names)."""
  root = Path(root)
  if not root.is_dir():
    raise DffdError(f"{root}: not a folder")
  found: dict = {}
  ignored = []
  for sub in sorted(p for p in root.iterdir() if p.is_dir()):
    tech = FOLDERS.get(sub.name.lower())
    if tech is None:
      ignored.append(sub.name)
      continue
    for sp in sorted(p for p in sub.iterdir() if p.is_dir()):
      split = SPLIT_DIRS.get(sp.name.lower())
      if split is None:
        ignored.append(f"{sub.name}/{sp.name}")
        continue
      found.setdefault(tech, {}).setdefault(split, {})[f"{sub.name}/{sp.name}"] = _images(sp)
  if not found:
    raise DffdError(f"{root}: no DFFD subset folders found (expected e.g. ffhq/, faceapp/, stylegan_ffhq/; "
                    f"saw {ignored[:8]})")
  return found, ignored


def select(folders: dict[str, list[Path]], want: int, seed: int) -> list[tuple[str, Path]]:
  """`want` files shared between folders, reproducibly; (folder, file) pairs."""
  pools = {}
  for name, files in sorted(folders.items()):
    f = list(files)
    random.Random(f"{seed}/{name}").shuffle(f)
    pools[name] = f
  chosen: dict[str, list[Path]] = {n: [] for n in pools}
  left = want
  open_ = [n for n in pools if pools[n]]
  while left > 0 and open_:  # fair share, remainders to folders that still have files
    share = max(1, left // len(open_))
    for n in list(open_):
      take = pools[n][len(chosen[n]):len(chosen[n]) + min(share, left)]
      chosen[n] += take
      left -= len(take)
      if len(chosen[n]) == len(pools[n]):
        open_.remove(n)
      if left <= 0:
        break
  return [(n, p) for n in pools for p in chosen[n]]


def _link(src: Path, dst: Path) -> None:
  dst.parent.mkdir(parents=True, exist_ok=True)
  if dst.is_symlink() or dst.exists():
    if dst.is_symlink() and os.readlink(dst) == str(src):
      return
    dst.unlink()
  os.symlink(src, dst)


def _match(base: Path | None, rel: Path) -> Path | None:
  if base is None:
    return None
  for c in [base / rel] + [base / rel.with_suffix(e) for e in (".png", ".jpg", ".jpeg", ".bmp", ".webp")]:
    if c.is_file():
      return c
  return None


def stage(root, out, *, seed: int = 0, scale: float = 1.0, faceapp_reals=None, faceapp_masks=None,
          sizes: dict | None = None) -> dict:
  """Select and stage; returns the plan (also written to OUT/plan.json).

  `scale` multiplies Table 16's sizes (e.g. 0.01 for a first trial).
  """
  root, out = Path(root).resolve(), Path(out)
  reals = Path(faceapp_reals).resolve() if faceapp_reals else None
  masks = Path(faceapp_masks).resolve() if faceapp_masks else None
  for name, d in (("--faceapp-reals", reals), ("--faceapp-masks", masks)):
    if d is not None and not d.is_dir():
      raise DffdError(f"{name} {d}: not a folder")
  found, ignored = scan(root)
  sizes = sizes or TABLE16
  plan, items = {"root": str(root), "seed": seed, "scale": scale, "ignored": ignored, "techniques": {}}, []
  for tech, want3 in sizes.items():
    row = plan["techniques"][tech] = {}
    for split, want in zip(SPLITS, want3):
      want = int(round(want * scale))
      folders = found.get(tech, {}).get(split, {})
      avail = sum(len(v) for v in folders.values())
      picked = select(folders, want, seed)
      n_paired = 0
      for folder, path in picked:
        rel_in_folder = path.relative_to(root / folder)
        rel = Path("images") / tech / split / folder.split("/")[0] / rel_in_folder
        _link(path, out / rel)
        item = {"image_id": f"dffd-{tech}-{split}-{folder.split('/')[0]}/{rel_in_folder.as_posix()}",
                "image": rel.as_posix(), "split": split, "label": "real" if tech in REAL else "fake",
                "technique": tech, "source": tech, "identity": f"{folder}/{rel_in_folder.as_posix()}",
                "annotate": False}
        if tech == "FaceAPP":
          # Folder-relative path under faceapp/: e.g. train/0001.png
          frel = path.relative_to(root / folder.split("/")[0])
          pair, mask = _match(reals, frel), _match(masks, frel)
          sub = Path(tech) / split / folder.split("/")[0] / rel_in_folder
          if mask is not None:
            _link(mask, out / "mask" / sub)
            item.update(annotate=True, mask=(Path("mask") / sub).as_posix())
          elif pair is not None:
            _link(pair, out / "pair" / sub)
            item.update(annotate=True, pair=(Path("pair") / sub).as_posix())
          n_paired += item["annotate"]
        items.append(item)
      row[split] = {"table16": want, "available": avail, "selected": len(picked)}
      if tech == "FaceAPP":
        row[split]["with_artifact_mask_source"] = n_paired
  out.mkdir(parents=True, exist_ok=True)
  tmp = out / ".manifest.jsonl.tmp"
  tmp.write_text("".join(json.dumps(it) + "\n" for it in items))
  os.replace(tmp, out / "manifest.jsonl")
  (out / "plan.json").write_text(json.dumps(plan, indent=2))
  (out / "commands.sh").write_text(commands(out, masks is not None, reals is not None))
  return plan


def commands(out: Path, have_masks: bool, have_reals: bool) -> str:
  """The annotation and build commands for a staged folder."""
  q = lambda p: shlex.quote(str(p))  # noqa: E731
  ann = Path(str(out).rstrip("/") + "_ann")
  lines = ["#!/usr/bin/env bash", "# written by `fifa prep dffd`; run from the fifa-jax checkout", "set -euo pipefail"]
  src = out / "images" / "FaceAPP"
  if have_masks:
    lines.append(f"fifa prep batch {q(src)} --out {q(ann / 'images' / 'FaceAPP')} --artifacts {q(out / 'mask' / 'FaceAPP')}")
  elif have_reals:
    lines.append(f"fifa prep batch {q(src)} --out {q(ann / 'images' / 'FaceAPP')} --reals {q(out / 'pair' / 'FaceAPP')}")
  else:
    lines.append("# no FaceAPP sources or masks given: FaceAPP gets Det./Cls. only, nothing to annotate")
  lines.append("# FaceAPP images without a source/mask have no .npz: the build treats them as Det./Cls. only")
  lines.append(f"fifa data build {q(out)} --annotations {q(ann)} --out {q(Path(str(out).rstrip('/') + '_shards'))}")
  return "\n".join(lines) + "\n"


def summary_lines(plan: dict) -> list[str]:
  rows = [f"{'technique':<15} {'split':<6} {'Table 16':>9} {'available':>10} {'selected':>9}"]
  for tech, row in plan["techniques"].items():
    for split, r in row.items():
      extra = f"  ({r['with_artifact_mask_source']} with a mask source)" if "with_artifact_mask_source" in r else ""
      rows.append(f"{tech:<15} {split:<6} {r['table16']:>9} {r['available']:>10} {r['selected']:>9}{extra}")
  if plan["ignored"]:
    rows.append(f"ignored folders: {', '.join(plan['ignored'][:10])}")
  return rows
