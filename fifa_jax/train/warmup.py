"""Image-side warm-up: a stand-in for pretrained FaRL and SAM weights.

The paper starts the Face Encoder from FaRL (trained on 20M faces) and the
Multi-Task and Pixel Decoders from GLaMM's SAM.  A model trained from random
weights (the `cpu` preset, `make demo`) has neither, and in a few hundred steps
of the full recipe its image side stays blind: the Det. head sits at the class
prior and mask Dice at 0.96-0.99 (docs/learning.md section 4).

`warmup.steps > 0` trains that image side alone first, with no LLM in the loop
(a step costs a tenth of a full one), on the same training split and the same
supervision the full recipe gives it: Det. and Cls. labels through the `[D]`
and `[C]` passes, and Region / Regional Artifact Masks through the `[M]` pass,
first of all those of "whole facial image" (the whole-image artifact mask: dense,
per-patch evidence of where the forgery is, which is what makes the Face Encoder
learn to see it).  What stands for a `[SEG]` state is a learned embedding per
FICT concept, used only here.  Batches are class-balanced (the Det. head
otherwise learns the prior); with `concepts_per_image > 1`, half of a fake's
further concepts are ones its artifacts touch.  The learning rate is the image
side's (`optim.lr * optim.lr_mult`).

Only the modules outside the LLM that the image path uses are updated; the
state's optimizer moments stay fresh for the main run.  It runs once, when a
run starts from step 0 (a resumed run has it in its checkpoint), and prints the
held-out (dev split) Det. accuracy and artifact-mask IoU it reached.  It is
sized for the small models it serves (the whole split in host memory, the batch
replicated over the mesh); with pretrained weights, leave it off.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from fifa_jax import fict
from fifa_jax.config import Config
from fifa_jax.data.pipeline import Augment, decode_image, normalise, resize_image, resize_mask
from fifa_jax.data.records import MaskStore, cls_label_of, rle_decode
from fifa_jax.data.subset import spread
from fifa_jax.train import losses, optim, state as state_lib

CONCEPTS: tuple[str, ...] = tuple(fict.CONCEPTS)
# The modules of the image path: Face Encoder -> decoder projector -> Multi-Task
# Decoder ([D], [C], [M] passes) -> Pixel Decoder and the two heads, plus the
# [SEG] projector that the concept embeddings pass through.
CONCEPT_TABLE = "warmup_concepts"  # the stand-in [SEG] states, dropped after the warm-up
WHOLE = CONCEPTS.index("whole facial image")
IS_ATOMIC = np.isin(np.arange(len(CONCEPTS)), [CONCEPTS.index(a) for a in fict.ATOMIC])
IMAGE_SIDE = ("vit", "decoder_projector", "decoder", "pixel_decoder", "det_head", "cls_head",
              "seg_projector")


def _concept_matrix() -> np.ndarray:
  """[n_concepts, 112] bool: which Atomic Concepts make up each concept's region."""
  m = np.zeros((len(CONCEPTS), len(fict.ATOMIC)), np.float32)
  for i, c in enumerate(CONCEPTS):
    for a in fict.atomic_descendants(c):
      m[i, fict.atomic_index(a)] = 1
  return m


def load_split(masks_folder: str, split: str, image_size: int, mask_hw: tuple[int, int]) -> dict:
  """Every image of `split` in a mask store: pixels, labels, and each concept's Region
  and Regional Artifact Masks at the mask resolution (computed at the image's
  resolution first, as the training pipeline does)."""
  store = MaskStore(masks_folder)
  membership = _concept_matrix()
  out = {"images": [], "det": [], "cls": [], "region": [], "artifact": []}
  for image_id in sorted(store.index):
    entry = store[image_id]
    if entry.meta.get("split", split) != split:  # a store without splits (toy data) serves all
      continue
    label = entry.meta.get("label")
    if label not in ("real", "fake"):
      continue
    rgb = decode_image(entry.image)
    atomic = np.stack([rle_decode(a) for a in entry.atomic]).reshape(len(fict.ATOMIC), -1)
    region = (membership @ atomic.astype(np.float32)) > 0  # [n_concepts, H*W]
    region = region.reshape(len(CONCEPTS), entry.height, entry.width)
    artifact = entry.artifact_mask()
    small = lambda m: resize_mask(m, mask_hw).astype(bool)
    out["images"].append(resize_image(rgb, image_size))
    out["det"].append(int(label == "fake"))
    out["cls"].append(cls_label_of(entry.meta["technique"]) if "technique" in entry.meta else -1)
    out["region"].append(np.stack([small(r) for r in region]))
    out["artifact"].append(np.stack([small(r & artifact) for r in region]))
  if not out["images"]:
    return {}
  return {k: np.stack(v) if k in ("images", "region", "artifact") else np.asarray(v, np.int32)
          for k, v in out.items()}


def draw_batch(data: dict, rng: np.random.Generator, batch: int, per_image: int,
               augment: bool) -> dict:
  """A class-balanced batch (where both classes exist) with `per_image` concepts each:
  for a fake, half of them among the concepts its artifacts touch."""
  fakes, reals = np.flatnonzero(data["det"] == 1), np.flatnonzero(data["det"] == 0)
  if len(fakes) and len(reals):
    idx = np.concatenate([rng.choice(fakes, batch // 2), rng.choice(reals, batch - batch // 2)])
  else:
    idx = rng.choice(len(data["det"]), batch)
  pixels, concepts, masks = [], [], []
  for i in idx:
    aug = Augment.draw(rng) if augment else None
    pixels.append(normalise(aug.image(data["images"][i]) if aug else data["images"][i]))
    # Atomic Concepts only: the [SEG]s of Loc./AGE answers name them.
    present = np.flatnonzero(data["region"][i].any((1, 2)) & IS_ATOMIC)
    touched = np.flatnonzero(data["artifact"][i].any((1, 2)) & IS_ATOMIC)
    k = (per_image - 1) // 2 if len(touched) else 0
    # The whole image's artifact mask first: dense, per-patch evidence of the forgery.
    pick = np.concatenate([[WHOLE], rng.choice(touched, k) if k else np.zeros(0, int),
                           rng.choice(present, per_image - 1 - k)])
    for c in pick:
      pair = np.stack([data["region"][i][c], data["artifact"][i][c]]).astype(np.uint8)
      masks.append(np.stack([aug.mask(m) for m in pair]) if aug else pair)
    concepts.append(pick)
  return {"pixels": np.stack(pixels).astype(np.float32),
          "det_label": data["det"][idx], "cls_label": data["cls"][idx],
          "concepts": np.concatenate(concepts).astype(np.int32),
          "rows": np.repeat(np.arange(batch), per_image).astype(np.int32),
          "masks": np.stack(masks).astype(np.float32)}


def _split_params(params: dict) -> tuple[dict, dict]:
  return ({k: v for k, v in params.items() if k in IMAGE_SIDE},
          {k: v for k, v in params.items() if k not in IMAGE_SIDE})


def run(cfg: Config, setup: state_lib.Setup, state: dict, masks_folder: str,
        log=print) -> dict:
  """`state` with its image side warmed up for `cfg.warmup.steps` steps."""
  w, fcfg = cfg.warmup, setup.fcfg
  hw = fcfg.mask_size
  t0 = time.perf_counter()
  train = load_split(masks_folder, cfg.data.split, fcfg.image_size, hw)
  if not train:
    log(f"warm-up skipped: no labelled {cfg.data.split} images in {masks_folder}")
    return state
  dev = load_split(masks_folder, "dev", fcfg.image_size, hw)
  log(f"warm-up of the image side: {len(train['det'])} {cfg.data.split} faces "
      f"({train['det'].mean():.0%} fake), {w.steps} steps of {w.batch_size} "
      f"(loaded in {time.perf_counter() - t0:.1f} s)")

  image_side, rest_params = _split_params(state["params"])
  d_llm = fcfg.llama.hidden_size
  table = jax.random.normal(jax.random.key(cfg.train.seed), (len(CONCEPTS), d_llm)) * 0.02
  trainable = {**image_side, CONCEPT_TABLE: table}
  mult = {k: v for k, v in cfg.optim.lr_mult.items() if k in image_side}
  lr = optax.warmup_cosine_decay_schedule(0.0, cfg.optim.lr, min(30, w.steps // 5 + 1), w.steps,
                                          0.05 * cfg.optim.lr)
  tx = optax.chain(optax.clip_by_global_norm(cfg.optim.clip_norm),
                   optax.adamw(lr, b1=cfg.optim.b1, b2=cfg.optim.b2,
                               weight_decay=cfg.optim.weight_decay),
                   optim.scale_by_module(mult))  # the image side's own rates; the table at lr
  opt_state = tx.init(trainable)
  loss_w = cfg.loss

  def forward(trainable, batch):
    params = {**rest_params, **{k: v for k, v in trainable.items() if k != CONCEPT_TABLE}}
    model = state_lib.merge(setup.graphdef, params, state["frozen"], state["rest"])
    image, _ = model.encode_image(batch["pixels"])
    det, cls = model.classify(image)
    seg = trainable[CONCEPT_TABLE][batch["concepts"]]
    masks = model.decode_masks(image, seg, batch["rows"])
    if "masks" in batch:  # targets at another resolution than the logits
      masks = jax.image.resize(masks, masks.shape[:2] + batch["masks"].shape[-2:], "bilinear")
    return det, cls, masks

  def loss_fn(trainable, batch):
    det, cls, masks = forward(trainable, batch)
    bce, dice = losses.per_mask_losses(masks, batch["masks"])
    parts = {"det": losses.label_loss(det, batch["det_label"]),
             "cls": losses.label_loss(cls, batch["cls_label"]),
             "mask_bce": bce.mean(), "mask_dice": dice.mean()}
    total = (parts["det"] + parts["cls"] + loss_w.mask_bce * parts["mask_bce"]
             + loss_w.mask_dice * parts["mask_dice"])
    return total, parts

  @jax.jit
  def step(trainable, opt_state, batch):
    (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, batch)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, parts

  @jax.jit
  def predict(trainable, batch):
    det, _, masks = forward(trainable, batch)
    return det.argmax(-1), masks > 0

  rep = NamedSharding(setup.mesh, P())
  put = lambda b: jax.device_put(b, rep)
  rng = np.random.default_rng(cfg.train.seed)
  bar = tqdm(total=w.steps, desc="warm-up", unit="step", dynamic_ncols=True,
             disable=not cfg.train.progress)
  with jax.set_mesh(setup.mesh):
    for i in range(1, w.steps + 1):
      batch = draw_batch(train, rng, w.batch_size, w.concepts_per_image, cfg.data.augment)
      trainable, opt_state, parts = step(trainable, opt_state, put(batch))
      bar.update(1)
      if i % cfg.train.log_every == 0 or i == w.steps:
        bar.set_postfix({k: f"{float(v):.3f}" for k, v in parts.items()})
    bar.close()
    if dev:
      r = _held_out(lambda b: predict(trainable, put(b)), dev)
      log(f"warm-up done ({time.perf_counter() - t0:.0f} s): on the dev split, Det. accuracy "
          f"{r['det_acc']:.1%}, whole-image artifact mask IoU {r['whole_iou']:.1%}; concepts the "
          f"artifacts touch: Regional Artifact Mask mIoU {r['concept_iou']:.1%}, Region Mask mIoU "
          f"{r['region_iou']:.1%}")
  params = {**rest_params, **trainable}
  params = jax.device_put({k: params[k] for k in state["params"]}, setup.shardings["params"])
  return {**state, "params": params}


def _held_out(predict, data: dict, batch: int = 16, per_image: int = 4) -> dict[str, float]:
  """On held-out faces: Det. accuracy; the IoU (pixels summed over the fakes) of the
  whole image's artifact mask; and, as Loc. records ask, the mean IoU of the Regional
  Artifact and Region Masks of up to `per_image` Atomic Concepts each fake's artifacts
  touch (evenly spaced in FICT order; Loc. answers list Atomic Concepts).  Fixed-size
  batches, the last one wrapped, so one compilation."""
  n = len(data["det"])
  right, inter, union, concept_iou, region_iou = 0, 0.0, 0.0, [], []
  for start in range(0, n, batch):
    idx, m = np.arange(start, start + batch) % n, min(batch, n - start)
    picks = []
    for i in idx:
      touched = np.flatnonzero(data["artifact"][i].any((1, 2)) & IS_ATOMIC)
      touched = [int(c) for c in spread(touched, per_image)]
      picks.append(([WHOLE] + touched + [WHOLE] * per_image)[:per_image + 1])
    concepts = np.asarray(picks, np.int32)  # [batch, 1 + per_image]
    b = {"pixels": np.stack([normalise(data["images"][i]) for i in idx]).astype(np.float32),
         "concepts": concepts.reshape(-1),
         "rows": np.repeat(np.arange(len(idx)), concepts.shape[1]).astype(np.int32)}
    labels, masks = (np.asarray(x) for x in predict(b))
    masks = masks.reshape(len(idx), concepts.shape[1], *masks.shape[1:])  # [b, k, 2, h, w]
    right += int((labels[:m] == data["det"][idx[:m]]).sum())
    for j in range(m):
      i = idx[j]
      if data["det"][i] != 1:
        continue
      t = data["artifact"][i][WHOLE]
      inter += float((masks[j, 0, 1] & t).sum())
      union += float((masks[j, 0, 1] | t).sum())
      for k, c in enumerate(concepts[j, 1:], start=1):
        if c == WHOLE:
          break
        for got, want, acc in ((masks[j, k, 1], data["artifact"][i][c], concept_iou),
                               (masks[j, k, 0], data["region"][i][c], region_iou)):
          u = (got | want).sum()
          acc.append(float((got & want).sum()) / u if u else 1.0)
  nan = float("nan")
  return {"det_acc": right / n, "whole_iou": inter / max(union, 1.0),
          "concept_iou": float(np.mean(concept_iou)) if concept_iou else nan,
          "region_iou": float(np.mean(region_iou)) if region_iou else nan}
