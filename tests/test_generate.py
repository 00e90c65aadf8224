"""KV-cache generation against plain re-run-everything greedy decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fifa_jax.models import generate as gen
from fifa_jax.models.generate import GenerationConfig, filter_logits, generate
from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM

VOCAB = 53
MODEL = LlamaForCausalLM(
    LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3),
    rngs=nnx.Rngs(0))
PROMPTS = [[5, 9, 14, 3, 22, 7], [11, 4], [30, 2, 8, 19]]
N = 6


def left_pad(prompts, width=None):
  width = width or max(map(len, prompts))
  ids = np.zeros((len(prompts), width), np.int32)
  mask = np.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
  return jnp.asarray(ids), jnp.asarray(mask)


def uncached_greedy(prompts, n):
  """Re-run the whole sequence for every new token (no cache, no mask: each row sits at the
  start of a buffer and causality hides what follows); also the hidden state that predicted it."""
  width = max(map(len, prompts)) + n
  buf = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    buf[i, :len(p)] = p
  full = nnx.jit(lambda m, x: m.forward(x))
  ends, rows = np.asarray([len(p) for p in prompts]), np.arange(len(prompts))
  tokens, hidden = [], []
  for _ in range(n):
    out = full(MODEL, jnp.asarray(buf))
    tok = np.asarray(jnp.argmax(out.logits, -1))[rows, ends - 1]
    hidden.append(np.asarray(out.hidden_states)[rows, ends - 1])
    buf[rows, ends] = tok
    tokens.append(tok)
    ends = ends + 1
  return np.stack(tokens, 1), np.stack(hidden, 1)


FREE = GenerationConfig(max_new_tokens=N, eos_token_ids=())


def test_cached_greedy_equals_uncached_and_hidden_matches_forward():
  ids, mask = left_pad(PROMPTS, width=7)
  out = generate(MODEL, ids, attention_mask=mask, config=FREE)
  assert out.tokens.shape == (3, N) and out.hidden.shape == (3, N, 32)
  assert out.lengths.tolist() == [N] * 3 and not out.finished.any()
  tokens, hidden = uncached_greedy(PROMPTS, N)
  np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
  np.testing.assert_allclose(np.asarray(out.hidden), hidden, atol=1e-5)
  # the same prompts right-padded give the same tokens (pad slots stay masked in the cache)
  right = jnp.asarray([p + [0] * (7 - len(p)) for p in PROMPTS], jnp.int32)
  right_mask = jnp.asarray([[1] * len(p) + [0] * (7 - len(p)) for p in PROMPTS], jnp.int32)
  again = generate(MODEL, right, attention_mask=right_mask, config=FREE)
  np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(out.tokens))


def test_prompt_as_embeddings_equals_prompt_as_ids():
  ids, mask = left_pad(PROMPTS)
  by_ids = generate(MODEL, ids, attention_mask=mask, config=FREE)
  by_embeds = generate(MODEL, inputs_embeds=MODEL.embed(ids), attention_mask=mask, config=FREE)
  np.testing.assert_array_equal(np.asarray(by_embeds.tokens), np.asarray(by_ids.tokens))
  np.testing.assert_allclose(np.asarray(by_embeds.hidden), np.asarray(by_ids.hidden), atol=1e-6)


def test_stop_criteria():
  ids, mask = left_pad(PROMPTS)
  free = np.asarray(generate(MODEL, ids, attention_mask=mask, config=FREE).tokens)
  eos = int(free[0, 2])
  stop_seq = tuple(int(t) for t in free[1, 1:3])
  cfg = GenerationConfig(max_new_tokens=N, eos_token_ids=(eos,), stop_sequences=(stop_seq,),
                         pad_token_id=-1)
  out = generate(MODEL, ids, attention_mask=mask, config=cfg)

  def expected_stop(row):
    for n in range(N):
      if row[n] == eos or (n >= 1 and tuple(row[n - 1:n + 1]) == stop_seq):
        return n + 1, True
    return N, False

  for i in range(3):
    n, stopped = expected_stop(free[i])
    assert int(out.lengths[i]) == n and bool(out.finished[i]) == stopped
    assert out.tokens[i, :n].tolist() == free[i, :n].tolist()
    assert (np.asarray(out.tokens[i, n:]) == -1).all() and not np.asarray(out.hidden[i, n:]).any()
  assert int(out.lengths[0]) <= 3 and int(out.lengths[1]) <= 3
  hits = out.token_mask(eos)
  assert bool(hits[0, int(out.lengths[0]) - 1]) and not bool(hits[0, int(out.lengths[0]):].any())


def test_sampling_is_reproducible_and_filters_work():
  ids, mask = left_pad(PROMPTS)
  cfg = GenerationConfig(max_new_tokens=N, do_sample=True, temperature=1.5, top_k=20, top_p=0.95,
                         eos_token_ids=())
  a = generate(MODEL, ids, attention_mask=mask, config=cfg, rng=jax.random.key(7))
  b = generate(MODEL, ids, attention_mask=mask, config=cfg, rng=jax.random.key(7))
  c = generate(MODEL, ids, attention_mask=mask, config=cfg, rng=jax.random.key(8))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()
  greedy = generate(MODEL, ids, attention_mask=mask, config=FREE)
  top1 = GenerationConfig(max_new_tokens=N, do_sample=True, top_k=1, eos_token_ids=())
  np.testing.assert_array_equal(np.asarray(generate(MODEL, ids, attention_mask=mask, config=top1,
                                                    rng=jax.random.key(3)).tokens),
                                np.asarray(greedy.tokens))

  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda x: (np.asarray(x) > -1e30).astype(int).tolist()
  assert kept(filter_logits(logits, top_k=2)) == [[1, 1, 0, 0]]
  assert kept(filter_logits(logits, top_p=0.7)) == [[1, 1, 0, 0]]
  assert kept(filter_logits(logits, top_p=0.85)) == [[1, 1, 1, 0]]
  assert kept(filter_logits(logits, top_p=0.1)) == [[1, 0, 0, 0]]


def test_one_compilation_per_shape():
  ids, mask = left_pad(PROMPTS)
  cfg = GenerationConfig(max_new_tokens=3, eos_token_ids=(1,))
  generate(MODEL, ids, attention_mask=mask, config=cfg)
  size = gen._generate._cache_size()
  generate(MODEL, (ids + 1) % VOCAB, attention_mask=mask, config=cfg)
  assert gen._generate._cache_size() == size
