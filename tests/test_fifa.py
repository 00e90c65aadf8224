"""FiFa-MLLM composition: splicing, [SEG] gathering, generation, sizes, sharded training step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from fifa_jax import mesh as mesh_lib
from fifa_jax.models.generate import GenerationConfig
from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM, param_counts
from fifa_jax.tokens import expand_image_tokens

CFG = FiFaConfig.tiny()
L_I = CFG.num_image_tokens  # 16


def make_batch(b=2, seed=0, segs=((2,), (1, 3, 5, 7))):
  """Rows: <s> <image>*L_I text <bbox> text [SEG]... with right padding."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(b):
    text = list(rng.integers(3, 100, size=14))
    text[4] = CFG.bbox_token_id
    for j in segs[i % len(segs)]:
      text[5 + j] = CFG.seg_token_id
    rows.append(expand_image_tokens([1, CFG.image_token_id] + text, CFG.image_token_id, L_I))
  width = max(map(len, rows)) + 2
  ids = np.zeros((b, width), np.int32)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  pixels = rng.normal(size=(b, CFG.image_size, CFG.image_size, 3)).astype(np.float32)
  boxes = np.tile(np.asarray([[[4.0, 8.0, 40.0, 50.0]]], np.float32), (b, 1, 1))
  return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels), jnp.asarray(boxes)


@pytest.fixture(scope="module")
def model():
  return FiFaMLLM(CFG, rngs=nnx.Rngs(0))


def test_expand_image_tokens():
  assert expand_image_tokens([1, 9, 5, 9], 9, 3) == [1, 9, 9, 9, 5, 9, 9, 9]


@pytest.mark.slow
def test_forward_shapes_splice_and_seg_states(model):
  ids, mask, pixels, boxes = make_batch()
  out = nnx.jit(lambda m, *a: m(a[0], a[1], boxes=a[2], attention_mask=a[3], seg_capacity=8))(
    model, ids, pixels, boxes, mask)
  b, t = ids.shape
  hm, wm = CFG.mask_size
  assert out.logits.shape == (b, t, CFG.llama.vocab_size)
  assert out.det_logits.shape == (b, 2) and out.cls_logits.shape == (b, 5)
  assert out.mask_logits.shape == (8, 2, hm, wm)
  # Row 0 has one [SEG], row 1 four: all five get a slot, row-major, no cap per row.
  assert out.seg_valid.tolist() == [True] * 5 + [False] * 3
  assert out.seg_rows[:5].tolist() == [0, 1, 1, 1, 1]

  # The spliced embeddings: image feature k at the k-th <image>, the box token at <bbox>.
  image, layers = model.encode_image(pixels)
  emb = model.prompt_embeds(ids, image, layers, boxes, pixels.shape[1:3])
  first = int(np.argmax(np.asarray(ids[0]) == CFG.image_token_id))
  np.testing.assert_allclose(np.asarray(emb[0, first:first + L_I]),
                             np.asarray(model.image_projector(image)[0]), atol=1e-6)
  box_tok = model.box_projector(model.box_encoder(layers, boxes, pixels.shape[1:3]))
  at = int(np.argmax(np.asarray(ids[1]) == CFG.bbox_token_id))
  np.testing.assert_allclose(np.asarray(emb[1, at]), np.asarray(box_tok[1, 0]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(emb[0, 0]), np.asarray(model.llm.embed(ids[:1, :1])[0, 0]))

  # Mask slot s comes from the hidden state *before* the s-th [SEG] (LISA's convention).
  hidden = model.llm.forward(inputs_embeds=emb, attention_mask=mask).hidden_states
  seg_at = np.nonzero(np.asarray(ids[1]) == CFG.seg_token_id)[0]
  want = model.decode_masks(image[1:], hidden[1, seg_at - 1], jnp.zeros(len(seg_at), jnp.int32))
  np.testing.assert_allclose(np.asarray(out.mask_logits[1:5]), np.asarray(want), atol=1e-4)
  # Each slot reads its own row's image: row 0's slot differs when decoded against row 1's.
  row0_state = hidden[0, int(np.argmax(np.asarray(ids[0]) == CFG.seg_token_id)) - 1][None]
  own = model.decode_masks(image, row0_state, jnp.zeros(1, jnp.int32))
  other = model.decode_masks(image, row0_state, jnp.ones(1, jnp.int32))
  np.testing.assert_allclose(np.asarray(out.mask_logits[0]), np.asarray(own[0]), atol=1e-4)
  assert float(jnp.abs(own - other).max()) > 1e-4
  # Region and Artifact masks of one concept differ (different semantic queries).
  assert float(jnp.abs(out.mask_logits[:, 0] - out.mask_logits[:, 1]).max()) > 1e-4


@pytest.mark.slow
def test_generate_masks_match_teacher_forcing():
  """Generated [SEG]s get the masks a teacher-forced pass over the same text gives."""
  cfg = FiFaConfig.tiny(seg_token_id=0)
  m = FiFaMLLM(cfg, rngs=nnx.Rngs(1))
  m.llm.lm_head.kernel[...] = jnp.zeros_like(m.llm.lm_head.kernel[...])  # argmax = id 0 = [SEG]
  ids, _, pixels, boxes = make_batch(segs=((),))
  ids = ids[:, :-2]  # no padding
  n_new = 4
  out = m.generate(ids, pixels, boxes=boxes,
                   config=GenerationConfig(max_new_tokens=n_new, eos_token_ids=()))
  assert out.tokens.shape == (2, n_new) and bool((out.tokens == 0).all())
  # Every generated [SEG] gets its mask (2 rows x 4), rows in order.
  assert out.seg_valid.all() and out.mask_logits.shape == (8, 2, *cfg.mask_size)
  assert out.seg_rows.tolist() == [0] * 4 + [1] * 4
  full = jnp.concatenate([ids, out.tokens], axis=1)
  ref = m(full, pixels, boxes=boxes, seg_capacity=8)
  assert ref.seg_valid.all()
  np.testing.assert_allclose(np.asarray(out.mask_logits), np.asarray(ref.mask_logits), atol=1e-4)


@pytest.mark.slow
def test_param_counts_full_paper_model():
  counts = param_counts(FiFaConfig.paper())
  print({k: f"{v:,}" for k, v in counts.items()})
  # FaRL ViT-B/16 = OpenAI CLIP ViT-B/16's visual tower.
  assert counts["vit"] == 86_192_640
  # Vicuna-7B (6,738,415,616) + 5 new rows in embed_tokens and lm_head.
  assert counts["llm"] == 6_738_415_616 + 5 * 4096 * 2
  # LoRA r128 on q_proj and v_proj of 32 layers.
  assert counts["lora"] == 32 * 2 * 2 * 4096 * 128
  d, mlp = 256, 2048
  lin = lambda a, b: a * b + b
  attn = lambda inner: 3 * lin(d, inner) + lin(inner, d)
  layer = attn(d) + 2 * attn(d // 2) + lin(d, mlp) + lin(mlp, d) + 4 * 2 * d
  assert counts["decoder"] == 2 * layer + attn(d // 2) + 2 * d + 5 * d  # + D, C, M, R, A
  assert counts["pixel_decoder"] == 2 * (4 * d * d + d) + 2 * d
  assert counts["image_projector"] == lin(768, 4096) + lin(4096, 4096)
  assert counts["seg_projector"] == lin(4096, 256) + lin(256, 256)
  assert counts["det_head"] == lin(d, d) + lin(d, 2)
  assert counts["cls_head"] == lin(d, d) + lin(d, 5)
  assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def _loss(model, ids, mask, pixels, boxes, seg_targets):
  """Text CE (next token, real positions) + mask BCE (valid [SEG] slots)."""
  out = model(ids, pixels, boxes=boxes, attention_mask=mask, seg_capacity=8)
  logp = jax.nn.log_softmax(out.logits[:, :-1])
  nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  w = mask[:, 1:].astype(jnp.float32)
  text = (nll * w).sum() / w.sum()
  x = out.mask_logits
  bce = jnp.maximum(x, 0) - x * seg_targets + jnp.log1p(jnp.exp(-jnp.abs(x)))
  v = out.seg_valid[:, None, None, None].astype(jnp.float32)
  return text + (bce * v).sum() / (v.sum() * np.prod(x.shape[1:]))


@pytest.mark.slow
def test_sharded_step_equals_single_device():
  model = FiFaMLLM(CFG, rngs=nnx.Rngs(0))
  ids, mask, pixels, boxes = make_batch(b=4, seed=1)
  seg_t = jnp.asarray(np.random.default_rng(2).integers(
    0, 2, size=(8, 2, *CFG.mask_size)), jnp.float32)
  batch = (ids, mask, pixels, boxes, seg_t)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def step(params, rest, *batch):
    return jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p, rest), *batch))(params)

  one = jax.devices()[0]
  loss1, grads1 = jax.jit(step)(*jax.device_put((params, rest, *batch), one))

  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  p_shard = mesh_lib.state_shardings(params, mesh)
  r_shard = mesh_lib.state_shardings(rest, mesh)
  b_shard = tuple(mesh_lib.batch_sharding(mesh, x.ndim) for x in batch)
  with jax.set_mesh(mesh):
    sharded = jax.jit(step, in_shardings=(p_shard, r_shard, *b_shard),
                      out_shardings=(NamedSharding(mesh, P()), p_shard))
    params_s = jax.device_put(params, p_shard)
    loss2, grads2 = sharded(params_s, jax.device_put(rest, r_shard),
                            *(jax.device_put(x, s) for x, s in zip(batch, b_shard)))
  # Something is really split: the LLM's MLP kernel over fsdp x tensor.
  spec = params_s["llm"]["model"]["layers"][0]["mlp"]["up_proj"]["kernel"][...].sharding.spec
  assert spec == P("fsdp", "tensor")
  np.testing.assert_allclose(float(loss2), float(loss1), atol=1e-5, rtol=0)
  flat1, flat2 = jax.tree.leaves(grads1), jax.tree.leaves(grads2)
  assert len(flat1) == len(flat2) > 100
  worst = max(float(jnp.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(flat1, flat2))
  print(f"sharded vs one device: loss {float(loss1):.6f} diff {abs(float(loss2) - float(loss1)):.2e}, "
        f"worst gradient diff {worst:.2e}")
  assert worst <= 1e-5, worst
  assert any(float(jnp.abs(g).max()) > 0 for g in flat1)
