"""FiFa-Annotator, vision side: `python -m data_prep.cli <command> ...` (run in .venv-prep).

Commands:
  regions IMAGE --out OUT.npz [--overlay OUT.png] [--artifact MASK | --real REAL]
      Region Masks of all 184 FICT concepts for one image: OUT.npz holds one HxW bool
      array per concept under its exact FICT name, `landmarks` (478x3, pixels) and
      `parsing`; with an artifact mask (or a real source to compute it from) also
      `artifact` and Step 2's `coverage`, `artifact_pixels`, `rank`,
      `artifact_existing` (184, fict.NAMES order) and `parent_boxes` (72, fict.PARENTS).
  batch IN_DIR --out OUT_DIR [--artifacts DIR | --reals DIR] [--workers N] [--overlays]
      Every image under IN_DIR, resumable; see data_prep.batch for the layout.
  artifact-mask REAL FAKE --out MASK.png
      Step 1: the whole-image artifact mask of FAKE from its real source.
  synth --out DIR --n N [--n-real R] [--size S] [--seed K]
      Synthetic forgeries with known artifact masks from offline real faces (data_prep.synth).
  dffd DFFD_ROOT --out STAGE [--scale F] [--faceapp-reals DIR | --faceapp-masks DIR]
      Select Table 16's DFFD subsets and stage them for batch + build (data_prep.dffd).
  procedures
      Print the region procedure of each Atomic Concept (Markdown with --markdown).

Exit status: 0 success; 1 some images of a batch failed (see OUT_DIR/failures.tsv);
2 bad usage or unusable input (the message names the input and the problem).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# One BLAS/OpenMP thread per process: the annotator's numpy work is small and
# OpenBLAS's spinning helper threads otherwise double the CPU time per image.  Set
# before numpy is first imported (worker processes inherit it).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_v, "1")


# --flip-average -> (Config.flip_average, Config.flip_average_person)
FLIP_AVERAGE = {"landmarks": (True, False), "both": (True, True), "off": (False, False)}


def _add_face_args(ap):
  g = ap.add_argument_group("faces and parsing")
  g.add_argument("--parser", default="builtin",
                 help="'builtin' (landmarks + selfie segmentation, no weights) or a face-parsing .onnx model")
  g.add_argument("--parser-labels", default="celebamask",
                 help="class order of the ONNX model: celebamask (also DML-CSR), bisenet, or 19 comma-separated names")
  g.add_argument("--parser-size", type=int, default=512, help="ONNX input size when the model's is dynamic")
  g.add_argument("--parser-crop", choices=("full", "face"), default="full",
                 help="ONNX: parse the whole picture, or a square around the face")
  g.add_argument("--multi-face", choices=("largest", "error"), default="largest",
                 help="several faces: annotate the largest (flagged) or fail")
  g.add_argument("--max-cut", type=float, default=None,
                 help="fail when more than this fraction of the landmarks lies outside the picture "
                      "(default: never; cut faces are flagged)")
  g.add_argument("--flip-average", choices=FLIP_AVERAGE, default="landmarks",
                 help="average MediaPipe's outputs with those of the mirrored picture: the landmarks "
                      "(default), both landmarks and selfie segmentation (most symmetric, ~4 ms more "
                      "at 512x512), or off (one pass, fastest, least symmetric)")
  g.add_argument("--no-flip-average", dest="flip_average", action="store_const", const="off",
                 help="same as --flip-average off")
  g = ap.add_argument_group("Step 2 / Step 5 (artifact-existing concepts, B-AGE boxes)")
  g.add_argument("--max-rank", type=int, default=50, help="X: rank <= X by coverage ratio (default 50)")
  g.add_argument("--min-ratio", type=float, default=10.0, help="Y: coverage ratio >= Y percent (default 10)")
  g.add_argument("--min-pixels", type=int, default=50, help="Z: artifact pixels >= Z (default 50)")
  g.add_argument("--rank-scope", choices=("separate", "joint"), default="separate",
                 help="rank atomic and parent concepts separately (default) or together")
  g.add_argument("--bage-boxes", type=int, default=20, help="random boxes per image (default 20)")
  g.add_argument("--bage-min-concepts", type=int, default=3, help="keep boxes with >= this many concepts (3)")
  g.add_argument("--bage-min-cover", type=float, default=0.5,
                 help="a box encompasses a concept holding >= this share of its Regional Artifact Mask (0.5)")
  g.add_argument("--seed", type=int, default=0, help="B-AGE box seed (combined with each image's name)")
  _add_pair_args(ap)


def _add_pair_args(ap):
  g = ap.add_argument_group("Step 1 pair rule (artifact mask from a real/fake pair)")
  g.add_argument("--top-percent", type=float, default=5.0, help="artifact = top P%% of grey differences (5)")
  g.add_argument("--min-diff", type=float, default=1.0, help="grey differences below this never count (1)")
  g.add_argument("--blur-sigma", type=float, default=0.0, help="Gaussian blur of the difference (0 = none)")
  g.add_argument("--max-shift", type=float, default=1.0, help="reject pairs shifted by more pixels (1.0)")
  g.add_argument("--min-corr", type=float, default=0.8, help="reject pairs less correlated (0.8)")


def _pair_rule(a):
  # lazy: `--help` and the other commands load none of this
  from data_prep.artifacts import PairRule
  return PairRule(top_percent=a.top_percent, min_diff=a.min_diff, blur_sigma=a.blur_sigma,
                  max_shift=a.max_shift, min_corr=a.min_corr)


def _config(a):
  # lazy: `--help` and the other commands load none of this
  from data_prep import artifacts, bage, pipeline
  return pipeline.Config(
      parser=a.parser, parser_labels=a.parser_labels, parser_size=a.parser_size, parser_crop=a.parser_crop,
      multi_face=a.multi_face, max_cut=a.max_cut, flip_average=FLIP_AVERAGE[a.flip_average][0],
      flip_average_person=FLIP_AVERAGE[a.flip_average][1],
      thresholds=artifacts.Thresholds(max_rank=a.max_rank, min_ratio=a.min_ratio, min_pixels=a.min_pixels,
                                      rank_scope=a.rank_scope),
      pair=_pair_rule(a),
      bage=bage.BageRule(n_boxes=a.bage_boxes, min_concepts=a.bage_min_concepts, min_cover=a.bage_min_cover,
                         seed=a.seed))


class UsageError(Exception):
  pass


def _need_file(p, what):
  if not Path(p).is_file():
    raise UsageError(f"{p}: {what} not found")


def cmd_regions(a) -> int:
  # lazy: `--help` and the other commands load none of this
  import numpy as np

  # lazy: `--help` and the other commands load none of this
  from data_prep import artifacts, imageio, overlay, pipeline, regions, store
  from fifa_jax import fict
  _need_file(a.image, "image")
  if a.parser != "builtin":
    _need_file(a.parser, "ONNX parser model")
  rgb = imageio.load_image(a.image)
  art = None
  if a.artifact:
    art = imageio.load_mask(a.artifact, rgb.shape[:2])
  elif a.real:
    art, _ = artifacts.artifact_mask_from_pair(imageio.load_image(a.real), rgb, _pair_rule(a))
  ann = pipeline.Annotator(_config(a))
  face, labels, allm = ann.regions(rgb)
  out = {n: allm[i] for i, n in enumerate(fict.NAMES)}
  out.update(landmarks=face.landmarks.astype(np.float32), parsing=labels,
             parent_boxes=artifacts.parent_boxes(allm),
             meta=np.array(json.dumps({"image": str(a.image), "n_faces": face.n_faces,
                                       "cut_fraction": face.cut_fraction, "flags": face.flags,
                                       "parser": ann.parser.name})))
  if art is not None:
    s2 = artifacts.step2(allm, art, ann.config.thresholds)
    out.update(artifact=art, **s2)
    flagged = [fict.NAMES[i] for i in np.flatnonzero(s2["artifact_existing"])]
  store.save(a.out, out)
  msg = f"{a.image}: {len(fict.NAMES)} Region Masks -> {a.out}"
  if face.flags:
    msg += f" (flags: {', '.join(face.flags)})"
  if art is not None:
    msg += f"; {len(flagged)} artifact-existing concepts"
  if a.overlay:
    atomic = allm[regions.ATOMIC_POS]
    imageio.save_png(a.overlay, overlay.render(rgb, atomic, labels, title=Path(a.image).name,
                                               landmarks=face.landmarks))
    msg += f"; overlay -> {a.overlay}"
  print(msg)
  return 0


def cmd_faces(a) -> int:
  """One JSON line per image: {"image", "size": [h, w], "faces": [Face.to_json()]} or
  {"image", "error"}.  With --stdin, paths are read one per line until EOF (a helper
  process that the inference side keeps open)."""
  # lazy: `--help` and the other commands load none of this
  import sys

  # lazy: as above
  from data_prep import faces as faces_lib, imageio
  finder = faces_lib.FaceFinder(max_faces=a.max_faces)
  paths = (line.rstrip("\n") for line in sys.stdin) if a.stdin else iter(a.images)
  for path in paths:
    if not path:
      continue
    try:
      rgb = imageio.load_image(path)
      row = {"image": path, "size": list(rgb.shape[:2]),
             "faces": [f.to_json() for f in finder.find(rgb)]}
    except (imageio.ImageError, ValueError, OSError) as e:
      row = {"image": path, "error": str(e)}
    print(json.dumps(row), flush=True)
  finder.close()
  return 0


def cmd_artifact_mask(a) -> int:
  # lazy: `--help` and the other commands load none of this
  from data_prep import artifacts, imageio
  _need_file(a.real, "real image")
  _need_file(a.fake, "fake image")
  mask, info = artifacts.artifact_mask_from_pair(imageio.load_image(a.real), imageio.load_image(a.fake),
                                                 _pair_rule(a))
  imageio.save_png(a.out, mask)
  print(f"{a.fake}: artifact mask -> {a.out} ({info['fraction']:.2%} of pixels, threshold {info['threshold']:.1f}, "
        f"shift ({info['shift'][0]:+.2f}, {info['shift'][1]:+.2f}) px, correlation {info['corr']:.3f})")
  return 0


def cmd_batch(a) -> int:
  # lazy: `--help` and the other commands load none of this
  from data_prep import batch
  if a.artifacts and a.reals:
    raise UsageError("give --artifacts or --reals, not both")
  if a.parser != "builtin":
    _need_file(a.parser, "ONNX parser model")
  s = batch.run(a.in_dir, a.out, _config(a), workers=a.workers, artifacts=a.artifacts, reals=a.reals,
                overlays=a.overlays, progress=not a.quiet)
  print(f"{s['images']} images: {s['done_before']} already done, {s['ok']} annotated, {s['failed']} failed "
        f"({s['flagged']} flagged), {s['seconds']} s, {s['images_per_second']} images/s")
  if s["failed"]:
    print(f"failures: {s['failures_log']}", file=sys.stderr)
  return 1 if s["failed"] else 0


def cmd_procedures(a) -> int:
  # lazy: `--help` and the other commands load none of this
  from data_prep import regions
  return regions.main(["--doc"] if a.markdown else [])


def cmd_sample(a) -> int:
  # lazy: `--help` and the other commands load none of this
  from data_prep import samples
  from data_prep.imageio import save_png
  rgb = {"astronaut": samples.astronaut, "tom_hanks": samples.tom_hanks}[a.name]()
  save_png(a.out, rgb)
  print(f"{a.name}: {rgb.shape[1]}x{rgb.shape[0]} -> {a.out}")
  return 0


def cmd_synth(a) -> int:
  # lazy: `--help` and the other commands load none of this
  from data_prep import synth
  if a.n < 3 or (a.n_real is not None and a.n_real < 3):
    raise UsageError("--n and --n-real must be at least 3 (one per split)")
  if a.max_ops < 1:
    raise UsageError(f"--max-ops must be at least 1, got {a.max_ops}")
  s = synth.synthesize(a.out, synth.SynthConfig(n=a.n, n_real=a.n_real, size=a.size, seed=a.seed,
                                                split_by=a.split_by, max_ops=a.max_ops,
                                                crop=a.crop, strength=a.strength),
                       progress=not a.quiet)
  per = ", ".join(f"{k}: {v['real']} real + {v['fake']} fake" for k, v in s["counts"].items())
  print(f"synth: {per} ({s['size']}x{s['size']}, split by {s['split_by']}) -> {a.out}/manifest.jsonl")
  return 0


def cmd_dffd(a) -> int:
  # lazy: `--help` and the other commands load none of this
  from data_prep import dffd
  if a.faceapp_reals and a.faceapp_masks:
    raise UsageError("give --faceapp-reals or --faceapp-masks, not both")
  try:
    plan = dffd.stage(a.root, a.out, seed=a.seed, scale=a.scale, faceapp_reals=a.faceapp_reals,
                      faceapp_masks=a.faceapp_masks)
  except dffd.DffdError as e:
    raise UsageError(str(e)) from None
  print("\n".join(dffd.summary_lines(plan)))
  print(f"staged -> {a.out}/manifest.jsonl; next: bash {a.out}/commands.sh")
  return 0


def build_parser():
  ap = argparse.ArgumentParser(prog="fifa prep", description=__doc__.split("\n")[0],
                               epilog="Exit status: 0 ok, 1 failures in a batch (see its log), 2 bad usage or input.")
  sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
  p = sub.add_parser("regions", help="Region Masks of all 184 concepts for one image",
                     description="Region Masks of all 184 FICT concepts for one image.")
  p.add_argument("image", help="face image (any RGB, RGBA or grey format PIL reads; EXIF orientation applied)")
  p.add_argument("--out", required=True, help="output .npz: one HxW bool array per FICT concept, plus landmarks")
  p.add_argument("--overlay", help="also write a labelled colour overlay (PNG)")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--artifact", help="whole-image artifact mask (nonzero = artifact): adds Step 2")
  g.add_argument("--real", help="real source image of IMAGE: artifact mask by the pair rule, adds Step 2")
  _add_face_args(p)
  p.set_defaults(fn=cmd_regions)

  p = sub.add_parser("batch", help="annotate a folder (workers, resume, failure log)",
                     description="Annotate every image under IN_DIR into OUT_DIR/<relative path>.npz.")
  p.add_argument("in_dir", metavar="IN_DIR")
  p.add_argument("--out", required=True, help="output folder")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--artifacts", help="folder of artifact masks, same relative paths (missing = real image)")
  g.add_argument("--reals", help="folder of the real sources of the fakes in IN_DIR, same relative paths")
  p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
  p.add_argument("--overlays", action="store_true", help="also write OUT_DIR/overlays/<rel>.png (slow)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  _add_face_args(p)
  p.set_defaults(fn=cmd_batch)

  p = sub.add_parser("faces", help="find the faces of photos and their crops (JSON lines)",
                     description="Find the faces in each image and the square crops the model is shown "
                                 "(data_prep/faces.py); one JSON line per image on stdout.")
  p.add_argument("images", nargs="*", metavar="IMAGE")
  p.add_argument("--stdin", action="store_true", help="read image paths from stdin, one per line")
  p.add_argument("--max-faces", type=int, default=8, help="most faces per image, largest first (default 8)")
  p.set_defaults(fn=cmd_faces)

  p = sub.add_parser("artifact-mask", help="Step 1: artifact mask from a real/fake pair",
                     description="Whole-image artifact mask of FAKE from its real source REAL (Step 1).")
  p.add_argument("real", metavar="REAL")
  p.add_argument("fake", metavar="FAKE")
  p.add_argument("--out", required=True, help="output mask PNG (255 = artifact)")
  _add_pair_args(p)
  p.set_defaults(fn=cmd_artifact_mask)

  p = sub.add_parser("sample", help="write a real face that ships with a package (for demos and checks)",
                     description="Write an offline sample face: skimage's astronaut or insightface's Tom Hanks.")
  p.add_argument("name", choices=("astronaut", "tom_hanks"))
  p.add_argument("--out", required=True, help="output PNG")
  p.set_defaults(fn=cmd_sample)

  p = sub.add_parser("synth", help="synthetic forgeries with known artifact masks (offline faces)",
                     description="Synthetic forgeries from the real faces available offline: local "
                                 "manipulations placed by the landmarks, with known artifact masks. "
                                 "Layout: see data_prep/synth.py and docs/data.md.")
  p.add_argument("--out", required=True, help="output folder (real/, fake/, mask/, pair/, manifest.jsonl)")
  p.add_argument("--n", type=int, default=24, help="number of fakes (default 24)")
  p.add_argument("--n-real", type=int, default=None, help="number of reals (default max(3, n/2))")
  p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--split-by", choices=("auto", "identity", "variant"), default="auto",
                 help="identity: one person per split where the offline faces allow (default when available)")
  p.add_argument("--max-ops", type=int, default=3,
                 help="manipulations per fake, drawn from 1..N (default 3; 1 keeps answers short)")
  p.add_argument("--crop", choices=("loose", "tight"), default="loose",
                 help="loose: the face fills 1/3-2/3 of the picture (default); tight: 2/3-7/8, "
                      "as aligned face crops")
  p.add_argument("--strength", choices=("subtle", "visible"), default="subtle",
                 help="subtle: artifacts as face editors leave them (default); visible: strong ones on "
                      "smaller regions, seen at 128 px (the cpu demo)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(fn=cmd_synth)

  p = sub.add_parser("dffd", help="select and stage DFFD subsets (Table 16) for batch + build",
                     description="Select FiFa's DFFD subsets (Table 16 sizes, capped by the copy) and stage "
                                 "them as links plus a manifest.  Expected layout: see data_prep/dffd.py.")
  p.add_argument("root", metavar="DFFD_ROOT")
  p.add_argument("--out", required=True, help="staging folder (images/, manifest.jsonl, plan.json, commands.sh)")
  p.add_argument("--scale", type=float, default=1.0, help="multiply Table 16's sizes (e.g. 0.01 for a trial)")
  p.add_argument("--seed", type=int, default=0)
  g = p.add_mutually_exclusive_group()
  g.add_argument("--faceapp-reals", help="real sources of the FaceAPP images, same paths relative to faceapp/")
  g.add_argument("--faceapp-masks", help="artifact masks of the FaceAPP images, same paths relative to faceapp/")
  p.set_defaults(fn=cmd_dffd)

  p = sub.add_parser("procedures", help="print the region procedure of each Atomic Concept")
  p.add_argument("--markdown", action="store_true")
  p.set_defaults(fn=cmd_procedures)
  return ap


def main(argv=None) -> int:
  ap = build_parser()
  a = ap.parse_args(argv)
  # lazy: `--help` and the other commands load none of this
  from data_prep.artifacts import PairError
  from data_prep.imageio import ImageError
  from data_prep.landmarks import FaceError
  try:
    return a.fn(a)
  except (UsageError, ImageError, FaceError, PairError, FileNotFoundError, ValueError, RuntimeError) as e:
    where = getattr(a, "image", None) or getattr(a, "fake", None) or getattr(a, "in_dir", "")
    text = str(e)
    if where and str(where) not in text:
      text = f"{where}: {text}"
    print(f"fifa prep {a.cmd}: error: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
