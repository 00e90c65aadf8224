"""Per-module learning rates (optim.lr_mult) and the image-side warm-up (train/warmup.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fifa_jax import config, mesh as mesh_lib
from fifa_jax.data import toy
from fifa_jax.train import loop, optim, state as state_lib, warmup


def _step(cfg, params, grads):
  tx = optim.make_tx(cfg, total_steps=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_lr_mult_scales_each_module_step_exactly():
  params = {"vit": {"w": jnp.ones((3, 2))}, "llm": {"w": jnp.ones((4,))}}
  grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), params)
  base = config.OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1)
  plain = _step(base, params, grads)
  scaled = _step(config.OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1,
                                    lr_mult={"vit": 0.25, "llm": 0.0}), params, grads)
  np.testing.assert_allclose(scaled["vit"]["w"], 0.25 * plain["vit"]["w"], rtol=1e-6)
  assert float(jnp.abs(plain["vit"]["w"]).min()) > 0
  np.testing.assert_array_equal(scaled["llm"]["w"], 0.0)


def test_lr_mult_names_are_checked():
  with pytest.raises(config.ConfigError, match=r"optim.lr_mult: \['vitt'\].*choose from"):
    optim.check_lr_mult(config.OptimConfig(lr_mult={"vitt": 0.5}), {"vit": {}, "llm": {}})
  with pytest.raises(config.ConfigError, match="optim.lr_mult.vit: multiplier must be >= 0"):
    config.load(None, ["optim.lr_mult={vit: -1}"])
  with pytest.raises(config.ConfigError, match="warmup: steps must be >= 0"):
    config.load(None, ["warmup.steps=-3"])


def test_the_default_optimizer_state_keeps_its_shape():
  """Runs without lr_mult keep the optimizer state their checkpoints hold."""
  params = {"vit": jnp.ones(2)}
  plain = optim.make_tx(config.OptimConfig(), 10).init(params)
  assert len(plain) == 2  # clip, adamw: no extra stage


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  root = toy.write_toy_dataset(tmp_path_factory.mktemp("toy"), n_images=4)
  cfg = config.load(loop.Path(__file__).parent.parent / "configs/tiny_cpu.yaml",
                    [f"data.root={root}", "train.progress=false", "warmup.steps=40",
                     "warmup.batch_size=4", "warmup.concepts_per_image=3", "optim.lr=3e-3",
                     "optim.lr_mult={vit: 0.5}"])
  fcfg = config.model_config(cfg)
  setup = state_lib.make_setup(cfg, fcfg, mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  state = state_lib.init_state(setup, 0, jit=False)
  return cfg, fcfg, setup, state, str(root / "masks")


@pytest.mark.slow
def test_warmup_trains_the_image_side_only_and_learns(tiny_run):
  cfg, fcfg, setup, state, masks = tiny_run
  data = warmup.load_split(masks, "train", fcfg.image_size, fcfg.mask_size)
  assert data["det"].tolist() == [1, 0, 1, 0]
  # Region Masks of a concept are the union of its atomic ones; artifacts only on fakes.
  assert data["region"].shape == (4, len(warmup.CONCEPTS), *fcfg.mask_size)
  assert data["region"][:, warmup.WHOLE].all()
  assert not data["artifact"][data["det"] == 0].any() and data["artifact"][data["det"] == 1].any()

  lines = []
  out = warmup.run(cfg, setup, state, masks, log=lines.append)
  assert "on the dev split, Det. accuracy" in lines[-1] and "artifact mask IoU" in lines[-1]
  assert "Regional Artifact Mask mIoU" in lines[-1] and "Region Mask mIoU" in lines[-1]
  # The whole image first, then Atomic Concepts only (the ones Loc./AGE [SEG]s name).
  picks = warmup.draw_batch(data, np.random.default_rng(0), 4, 3, augment=False)["concepts"]
  assert (picks.reshape(4, 3)[:, 0] == warmup.WHOLE).all()
  assert warmup.IS_ATOMIC[picks.reshape(4, 3)[:, 1:]].all()
  changed = {k for k in state["params"]
             if any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state["params"][k]),
                                                             jax.tree.leaves(out["params"][k])))}
  assert changed and changed <= set(warmup.IMAGE_SIDE), changed
  assert {"vit", "decoder", "det_head"} <= changed
  assert jax.tree.structure(out["params"]) == jax.tree.structure(state["params"])
  for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(state["params"])):
    assert a.shape == b.shape and a.dtype == b.dtype and a.sharding == b.sharding
  assert out["opt_state"] is state["opt_state"] and out["frozen"] is state["frozen"]

  # It learns: on these four faces, the Det. loss and mask losses fall from their start.
  def losses_of(params):
    rng = np.random.default_rng(1)
    batch = warmup.draw_batch(data, rng, 4, 3, augment=False)
    model = state_lib.merge(setup.graphdef, params, state["frozen"], state["rest"])
    image, _ = model.encode_image(jnp.asarray(batch["pixels"]))
    det, _ = model.classify(image)
    return float(optax.softmax_cross_entropy_with_integer_labels(det, batch["det_label"]).mean())
  assert losses_of(out["params"]) < 0.5 * losses_of(state["params"])
