"""Can the Face Encoder learn to see forgeries from scratch?  A one-minute check.

  .venv/bin/python bench/encoder_probe.py SYNTH_DIR [--arch vit|vit-plain|cnn] [--steps 300] [--lr 2e-3]

SYNTH_DIR is a `fifa data synth` folder (manifest.jsonl with train/test splits,
one person per split).  The probe trains only the image side of the Det. task,
no LLM: the cpu preset's Face Encoder (FaRL's ViT layout) -> decoder projector ->
Multi-Task Decoder's [D] pass -> Det. head, on class-balanced batches of 16 with
the training pipeline's augmentation, and prints the accuracy on the training
faces and on the held-out person every 50 steps.  `--arch vit-plain` is the same
encoder without the cpu preset's convolutional stem (FaRL's plain 16-px
patchify); `--arch cnn` swaps the image side for three 3x3 convolutions and a
global max pool, as a yardstick for how learnable the forgeries are at all.

Why it exists: the demo model's Det. head stays at chance on the held-out person
(docs/learning.md section 4).  This isolates the image side in a loop that takes a
minute instead of the demo's eight.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fifa_jax.data.pipeline import Augment, normalise, resize_image
from fifa_jax.models.fifa import FiFaConfig, FiFaMLLM


def load_split(root: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
  images, labels = [], []
  for row in rows:
    if row["split"] == split:
      rgb = cv2.cvtColor(cv2.imread(str(root / row["image"])), cv2.COLOR_BGR2RGB)
      images.append(resize_image(rgb, size))
      labels.append(int(row["label"] == "fake"))
  if not images:
    raise SystemExit(f"{root}: no {split} images in manifest.jsonl")
  return np.stack(images), np.asarray(labels, np.int32)


class FaceEncoderDet(nnx.Module):
  """The cpu preset's Det. path: ViT -> decoder projector -> [D] pass -> head."""

  def __init__(self, config: FiFaConfig, seed: int):
    model = FiFaMLLM(config, rngs=nnx.Rngs(seed))
    self.vit, self.projector = model.vit, model.decoder_projector
    self.decoder, self.head = model.decoder, model.det_head
    self.grid = config.grid
    self.layers = config.vit.layers

  def __call__(self, pixels: jax.Array) -> jax.Array:
    image = self.vit.hidden_states(pixels, [self.layers])[0][:, 1:]
    d_out, _ = self.decoder.classify(self.projector(image), self.grid)
    return self.head(d_out).astype(jnp.float32)


class SmallCnn(nnx.Module):
  """Three stride-2 3x3 convolutions and a global max pool: the yardstick."""

  def __init__(self, seed: int):
    rngs = nnx.Rngs(seed)
    self.convs = nnx.List([nnx.Conv(3, 32, (3, 3), strides=2, rngs=rngs),
                           nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs),
                           nnx.Conv(64, 64, (3, 3), strides=2, rngs=rngs)])
    self.out = nnx.Linear(64, 2, rngs=rngs)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    x = pixels
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    return self.out(x.max((1, 2)))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("synth", type=Path, help="a `fifa data synth` output folder")
  p.add_argument("--arch", choices=("vit", "vit-plain", "cnn"), default="vit")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-augment", dest="augment", action="store_false",
                 help="train on the images as they are (no crop/scale or colour jitter)")
  args = p.parse_args(argv)

  config = FiFaConfig.cpu()
  if args.arch == "vit-plain":
    config = dataclasses.replace(config, vit=dataclasses.replace(config.vit, stem=()))
  x_train, y_train = load_split(args.synth, "train", config.image_size)
  x_test, y_test = load_split(args.synth, "test", config.image_size)
  print(f"train: {len(y_train)} faces ({y_train.mean():.0%} fake); "
        f"held-out person: {len(y_test)} ({y_test.mean():.0%} fake)")
  model = SmallCnn(args.seed) if args.arch == "cnn" else FaceEncoderDet(config, args.seed)
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, 30, args.steps, 0.05 * args.lr)
  optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.01), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, pixels, labels):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(pixels), labels).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def predict(model, pixels):
    return model(pixels).argmax(-1)

  def accuracy(images, labels):
    return float((np.asarray(predict(model, jnp.asarray(normalise(images)))) == labels).mean())

  rng = np.random.default_rng(args.seed)
  fakes, reals = np.flatnonzero(y_train == 1), np.flatnonzero(y_train == 0)
  start = time.perf_counter()
  for step in range(1, args.steps + 1):
    idx = np.concatenate([rng.choice(fakes, 8), rng.choice(reals, 8)])
    pixels = np.stack([normalise(Augment.draw(rng).image(x_train[i]) if args.augment else x_train[i])
                       for i in idx])
    loss = train_step(model, optimizer, jnp.asarray(pixels), jnp.asarray(y_train[idx]))
    if step % 50 == 0 or step == args.steps:
      print(f"step {step:5d}  loss {float(loss):.3f}  train acc {accuracy(x_train, y_train):.3f}  "
            f"held-out acc {accuracy(x_test, y_test):.3f}  ({time.perf_counter() - start:.0f} s)",
            flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
