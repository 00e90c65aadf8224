"""FiFa-MLLM losses (Appendix B).

total = 1.0 * text CE + 0.2 * (Det. CE + Cls. CE) + 0.5 * mask BCE + 2.0 * mask Dice

* text: autoregressive cross-entropy on answer tokens only (`loss_mask`), mean
  over those tokens in the batch (`loss.text_mean: samples`: each sample's mean,
  then the mean over samples; `both`: the average of the two);
* Det./Cls.: cross-entropy, mean over the samples that carry the label
  (label < 0 means "no label");
* masks: per-pixel BCE and Dice over every valid [SEG] slot's Region Mask and
  Regional Artifact Mask, each summed over masks and divided by the number of
  masks, as LISA/GLaMM do (`sigmoid_ce_loss`, `dice_loss` with scale 1000,
  eps 1e-6); the mask logits are upsampled (bilinear) to the binary targets'
  resolution first, the input image's, as they do.

Everything is float32 and static-shape: padded slots and unlabelled samples
are masked out, never sliced away.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fifa_jax.config import LossConfig as LossWeights  # the run config's `loss` node
from fifa_jax.models.fifa import upsample_masks


def token_ce(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array):
  """Per-position CE [B, T] of logits[:, t] against input_ids[:, t+1], and its weight
  (loss_mask[:, t+1]; the last position has no target)."""
  # Shift the (small) targets, not the [B, T, V] logits: slicing the logits copies
  # them, forward and backward.
  targets = jnp.roll(input_ids, -1, axis=1)
  mask = jnp.roll(loss_mask, -1, axis=1).at[:, -1].set(0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return ce * mask, mask


def text_loss(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Mean CE over the answer tokens of the batch."""
  ce, mask = token_ce(logits, input_ids, loss_mask)
  return ce.sum() / jnp.maximum(mask.sum(), 1.0)


def label_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean CE over samples with a label (labels < 0 are ignored)."""
  has = labels >= 0
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                       jnp.where(has, labels, 0))
  return jnp.where(has, ce, 0.0).sum() / jnp.maximum(has.sum(), 1)


def per_mask_losses(mask_logits: jax.Array, targets: jax.Array, scale: float = 1000.0,
                    eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """(BCE, Dice) of each mask [...] from logits and targets [..., H, W] (LISA's definitions)."""
  lead = mask_logits.shape[:-2]
  x = mask_logits.astype(jnp.float32).reshape(*lead, -1)
  t = targets.astype(jnp.float32).reshape(*lead, -1)
  bce = optax.sigmoid_binary_cross_entropy(x, t).mean(-1)
  p = jax.nn.sigmoid(x)
  num = 2 * (p / scale * t).sum(-1)
  den = (p / scale).sum(-1) + (t / scale).sum(-1)
  return bce, 1 - (num + eps) / (den + eps)


def mask_losses(mask_logits: jax.Array, targets: jax.Array, valid: jax.Array,
                scale: float = 1000.0, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """(BCE, Dice), each summed over valid masks / number of valid masks.

  mask_logits, targets: [..., H, W]; valid: the leading dims (bool).
  """
  bce, dice = per_mask_losses(mask_logits, targets, scale, eps)
  w = valid.astype(jnp.float32)
  n = w.sum() + 1e-8
  return (bce * w).sum() / n, (dice * w).sum() / n


def fifa_loss(out, batch, weights: LossWeights = LossWeights(),
              num_tasks: int | None = None) -> tuple[jax.Array, dict]:
  """Total loss and its parts from a FiFaOutput and a batch; each term computed once.

  batch: input_ids [B, T], loss_mask [B, T], det_label [B], cls_label [B]
  (-1 where absent), masks [S, 2, H, W] (Region, Regional Artifact) per [SEG]
  slot and seg_valid [S].  With `num_tasks`, parts["per_task"] holds per-task
  sums and counts ([num_tasks] each, by batch["task"]) of the same terms.
  """
  ce, tmask = token_ce(out.logits, batch["input_ids"], batch["loss_mask"])
  text = ce.sum() / jnp.maximum(tmask.sum(), 1.0)
  if weights.text_mean in ("samples", "both"):
    counts = tmask.sum(-1)
    has = counts > 0
    by_sample = (jnp.where(has, ce.sum(-1) / jnp.maximum(counts, 1.0), 0.0).sum()
                 / jnp.maximum(has.sum(), 1))
    text = by_sample if weights.text_mean == "samples" else 0.5 * (text + by_sample)
  det = label_loss(out.det_logits, batch["det_label"])
  cls = label_loss(out.cls_logits, batch["cls_label"])
  # LISA's F.interpolate of its low-resolution masks to the targets' size before the loss.
  logits = upsample_masks(out.mask_logits, batch["masks"].shape[-2:])
  bce2, dice2 = per_mask_losses(logits, batch["masks"])  # [S, 2]
  valid = batch["seg_valid"].astype(bool) & out.seg_valid
  w = valid.astype(jnp.float32)[:, None] * jnp.ones((1, 2), jnp.float32)
  n = w.sum() + 1e-8
  bce, dice = (bce2 * w).sum() / n, (dice2 * w).sum() / n
  total = (weights.text * text + weights.det_cls * (det + cls)
           + weights.mask_bce * bce + weights.mask_dice * dice)
  parts = {"loss": total, "text": text, "det": det, "cls": cls, "mask_bce": bce,
           "mask_dice": dice, "num_masks": w.sum()}
  if "masks_dropped" in batch:
    parts["masks_dropped"] = batch["masks_dropped"].sum()
  if num_tasks is not None:
    task = batch["task"]
    by_task = lambda x, ids=task: jax.ops.segment_sum(x, ids, num_segments=num_tasks)
    slot_task = task[out.seg_rows]
    parts["per_task"] = {
        "text_sum": by_task(ce.sum(-1)), "text_count": by_task(tmask.sum(-1)),
        "mask_bce_sum": by_task((bce2 * w).sum(-1), slot_task),
        "mask_dice_sum": by_task((dice2 * w).sum(-1), slot_task),
        "mask_count": by_task(w.sum(-1), slot_task),
        "samples": by_task(jnp.ones(task.shape, jnp.float32)),
        "tokens": by_task(batch["attention_mask"].sum(-1).astype(jnp.float32)),
    }
  return total, parts
