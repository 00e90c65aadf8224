"""FiFa-MLLM losses (Appendix B).

total = 1.0 * text CE + 0.2 * (Det. CE + Cls. CE) + 0.5 * mask BCE + 2.0 * mask Dice

* text: autoregressive cross-entropy on answer tokens only (`loss_mask`), mean
  over those tokens in the batch;
* Det./Cls.: cross-entropy, mean over the samples that carry the label
  (label < 0 means "no label");
* masks: per-pixel BCE and Dice over every valid [SEG] slot's Region Mask and
  Regional Artifact Mask, each summed over masks and divided by the number of
  masks, as LISA/GLaMM do (`sigmoid_ce_loss`, `dice_loss` with scale 1000,
  eps 1e-6).

Everything is float32 and static-shape: padded slots and unlabelled samples
are masked out, never sliced away.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class LossWeights:
  text: float = 1.0
  det_cls: float = 0.2
  mask_bce: float = 0.5
  mask_dice: float = 2.0


def text_loss(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """CE of logits[:, t] against input_ids[:, t+1] where loss_mask[:, t+1] is set."""
  # Shift the (small) targets, not the [B, T, V] logits: slicing the logits copies
  # them, forward and backward.  The last position has no target and is masked.
  targets = jnp.roll(input_ids, -1, axis=1)
  mask = jnp.roll(loss_mask, -1, axis=1).at[:, -1].set(0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def label_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean CE over samples with a label (labels < 0 are ignored)."""
  has = labels >= 0
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                       jnp.where(has, labels, 0))
  return jnp.where(has, ce, 0.0).sum() / jnp.maximum(has.sum(), 1)


def mask_losses(mask_logits: jax.Array, targets: jax.Array, valid: jax.Array,
                scale: float = 1000.0, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """(BCE, Dice), each summed over valid masks / number of valid masks.

  mask_logits, targets: [..., H, W]; valid: the leading dims (bool).
  """
  x = mask_logits.astype(jnp.float32).reshape(*valid.shape, -1)
  t = targets.astype(jnp.float32).reshape(*valid.shape, -1)
  w = valid.astype(jnp.float32)
  n = w.sum() + 1e-8
  bce = optax.sigmoid_binary_cross_entropy(x, t).mean(-1)
  p = jax.nn.sigmoid(x)
  num = 2 * (p / scale * t).sum(-1)
  den = (p / scale).sum(-1) + (t / scale).sum(-1)
  dice = 1 - (num + eps) / (den + eps)
  return (bce * w).sum() / n, (dice * w).sum() / n


def fifa_loss(out, batch, weights: LossWeights = LossWeights()) -> tuple[jax.Array, dict]:
  """Total loss and its parts from a FiFaOutput and a batch.

  batch: input_ids [B, T], loss_mask [B, T], det_label [B], cls_label [B]
  (-1 where absent), masks [B, S, 2, H, W] (Region, Regional Artifact) and
  mask_valid [B, S] (the data's [SEG] slots; AND-ed with the model's).
  """
  text = text_loss(out.logits, batch["input_ids"], batch["loss_mask"])
  det = label_loss(out.det_logits, batch["det_label"])
  cls = label_loss(out.cls_logits, batch["cls_label"])
  valid = batch["mask_valid"].astype(bool) & out.seg_valid
  valid2 = jnp.broadcast_to(valid[..., None], valid.shape + (2,))
  bce, dice = mask_losses(out.mask_logits, batch["masks"], valid2)
  total = (weights.text * text + weights.det_cls * (det + cls)
           + weights.mask_bce * bce + weights.mask_dice * dice)
  return total, {"loss": total, "text": text, "det": det, "cls": cls, "mask_bce": bce,
                 "mask_dice": dice, "num_masks": valid2.sum()}
