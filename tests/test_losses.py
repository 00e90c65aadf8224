"""Losses against PyTorch transcriptions of LISA/GLaMM's definitions, and their masking."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fifa_jax import config
from fifa_jax.train import losses as L


def _lisa_bce(inputs, targets, num_masks):
  loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
  return loss.flatten(1, 2).mean(1).sum() / (num_masks + 1e-8)


def _lisa_dice(inputs, targets, num_masks, scale=1000, eps=1e-6):
  inputs = inputs.sigmoid().flatten(1, 2)
  targets = targets.flatten(1, 2)
  numerator = 2 * (inputs / scale * targets).sum(-1)
  denominator = (inputs / scale).sum(-1) + (targets / scale).sum(-1)
  return (1 - (numerator + eps) / (denominator + eps)).sum() / (num_masks + 1e-8)


def test_mask_losses_match_lisa_on_valid_masks_and_ignore_padding():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 2, 16, 16)).astype(np.float32) * 3
  targets = (rng.random((2, 3, 2, 16, 16)) < 0.3).astype(np.float32)
  valid = np.array([[1, 1, 0], [1, 0, 0]], bool)
  v2 = np.repeat(valid[..., None], 2, -1)
  bce, dice = L.mask_losses(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(v2))
  sel_x = torch.from_numpy(logits[v2])
  sel_t = torch.from_numpy(targets[v2])
  n = int(v2.sum())
  np.testing.assert_allclose(bce, _lisa_bce(sel_x, sel_t, n).item(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dice, _lisa_dice(sel_x, sel_t, n).item(), rtol=1e-6, atol=1e-6)
  # Garbage in padded slots changes nothing.
  logits2 = logits.copy()
  logits2[~v2] = 1e4
  bce2, dice2 = L.mask_losses(jnp.asarray(logits2), jnp.asarray(targets), jnp.asarray(v2))
  assert float(bce2) == pytest.approx(float(bce)) and float(dice2) == pytest.approx(float(dice))


def test_text_loss_is_shifted_and_masked_to_the_answer():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
  ids = rng.integers(0, 11, size=(2, 6))
  mask = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])
  got = L.text_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
  tl = torch.from_numpy(logits[:, :-1]).reshape(-1, 11)
  tt = torch.from_numpy(np.where(mask[:, 1:] == 1, ids[:, 1:], -100)).reshape(-1)
  want = F.cross_entropy(tl, tt, ignore_index=-100)
  np.testing.assert_allclose(got, want.item(), rtol=1e-6)


def test_label_loss_ignores_unlabelled_samples():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5)), jnp.float32)
  labels = jnp.asarray([2, -1, 0, -1])
  want = F.cross_entropy(torch.tensor(np.asarray(logits)[[0, 2]]), torch.tensor([2, 0]))
  np.testing.assert_allclose(L.label_loss(logits, labels), want.item(), rtol=1e-6)
  assert float(L.label_loss(logits, jnp.full((4,), -1))) == 0.0


@pytest.mark.slow
def test_fifa_loss_weights_the_parts_as_appendix_b():
  rng = np.random.default_rng(3)
  out = SimpleNamespace(
      logits=jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32),
      det_logits=jnp.asarray(rng.normal(size=(2, 2)), jnp.float32),
      cls_logits=jnp.asarray(rng.normal(size=(2, 5)), jnp.float32),
      mask_logits=jnp.asarray(rng.normal(size=(4, 2, 8, 8)), jnp.float32),
      seg_valid=jnp.asarray([True, True, True, False]), seg_rows=jnp.asarray([0, 0, 1, 1]))
  batch = dict(input_ids=jnp.asarray(rng.integers(0, 7, (2, 5))), loss_mask=jnp.ones((2, 5)),
               attention_mask=jnp.ones((2, 5), jnp.int32), task=jnp.asarray([2, 9]),
               det_label=jnp.asarray([1, -1]), cls_label=jnp.asarray([-1, 3]),
               masks=jnp.asarray(rng.random((4, 2, 8, 8)) < 0.5),
               seg_valid=jnp.asarray([True, False, True, True]))
  total, parts = L.fifa_loss(out, batch, num_tasks=11)
  # The per-task sums add up to the batch's parts (each term computed once).
  pt = parts.pop("per_task")
  np.testing.assert_allclose(pt["text_sum"].sum() / pt["text_count"].sum(), parts["text"], rtol=1e-6)
  np.testing.assert_allclose(pt["mask_dice_sum"].sum() / pt["mask_count"].sum(), parts["mask_dice"],
                             rtol=1e-6)
  assert pt["mask_count"].tolist()[2] == 2 and pt["mask_count"].tolist()[9] == 2
  w = L.LossWeights()
  want = (parts["text"] + 0.2 * (parts["det"] + parts["cls"]) + 0.5 * parts["mask_bce"]
          + 2.0 * parts["mask_dice"])
  np.testing.assert_allclose(total, want, rtol=1e-6)
  assert (w.text, w.det_cls, w.mask_bce, w.mask_dice) == (1.0, 0.2, 0.5, 2.0)
  # Only slots valid in both the data and the model count: 0 and 2, two masks each.
  assert int(parts["num_masks"]) == 4


def test_text_mean_over_samples_weighs_each_answer_alike():
  """`loss.text_mean: samples`: each sample's mean CE, then the mean over samples that have
  answer tokens; a one-token answer weighs as much as a long one."""
  rng = np.random.default_rng(5)
  b, t, v = 3, 6, 7
  logits = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, v, (b, t)))
  # Row 0: a long answer (positions 1-5); row 1: one answer token; row 2: none (no label).
  loss_mask = jnp.asarray([[0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]])
  out = SimpleNamespace(logits=logits, det_logits=jnp.zeros((b, 2)), cls_logits=jnp.zeros((b, 5)),
                        mask_logits=jnp.zeros((1, 2, 4, 4)), seg_valid=jnp.asarray([False]),
                        seg_rows=jnp.asarray([0]))
  batch = dict(input_ids=ids, loss_mask=loss_mask, det_label=-jnp.ones(b, jnp.int32),
               cls_label=-jnp.ones(b, jnp.int32), masks=jnp.zeros((1, 2, 4, 4)),
               seg_valid=jnp.asarray([False]))
  ce, mask = L.token_ce(logits, ids, loss_mask)
  ce, mask = np.asarray(ce), np.asarray(mask)
  row_means = [ce[r].sum() / mask[r].sum() for r in (0, 1)]
  _, by_samples = L.fifa_loss(out, batch, L.LossWeights(text_mean="samples"))
  _, by_tokens = L.fifa_loss(out, batch, L.LossWeights())
  np.testing.assert_allclose(by_samples["text"], np.mean(row_means), rtol=1e-6)
  np.testing.assert_allclose(by_tokens["text"], ce.sum() / mask.sum(), rtol=1e-6)
  assert not np.isclose(by_samples["text"], by_tokens["text"])
  _, both = L.fifa_loss(out, batch, L.LossWeights(text_mean="both"))
  np.testing.assert_allclose(both["text"], 0.5 * (by_samples["text"] + by_tokens["text"]), rtol=1e-6)


def test_text_mean_is_checked():
  with pytest.raises(config.ConfigError, match="loss.text_mean: 'sample' is not one of"):
    config.load(None, ["loss.text_mean=sample"])
