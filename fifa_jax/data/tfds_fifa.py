"""A TFDS builder over a `fifa data build` folder, for users of tensorflow-datasets:

    import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils
    from fifa_jax.data import tfds_fifa  # registers "fifa11"
    tfds_fifa.prepare("shards/", data_dir="tfds/")       # once: BUILD -> TFDS array_record
    ds = tfds.data_source("fifa11", data_dir="tfds/")    # {"train", "dev", "test"}: random access
    ex = ds["train"][0]

Works without TensorFlow: images and masks are stored as encoded bytes in Tensor
features of dtype object (a tfds Image feature needs TensorFlow), strings as str
Tensors.  One example per QA record, with its image and, per [SEG], the Region Mask
and Regional Artifact Mask as PNG bytes (decode with cv2.imdecode or PIL).
Missing values: region "" , box [-1, -1, -1, -1], det_label / cls_label -1,
technique / explainer "".  The BUILD folder is the builder's manual_dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from fifa_jax import tokens
from fifa_jax.data import records


class Fifa11(tfds.core.GeneratorBasedBuilder):
  """FiFa-11 records of one `fifa data build` folder."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "QA records (fifa-qa/1) with images and per-[SEG] masks."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the `fifa data build` output folder as manual_dir."

  # tfds finds a builder's code by importlib resources, which needs the
  # importlib_resources backport here; this file's path is all it wants.
  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):
    # lazy: tfds calls this on the class; etils only then
    from etils import epath
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    F = tfds.features
    return self.dataset_info_from_configs(
        description=__doc__,
        features=F.FeaturesDict({
            "record_id": F.Tensor(shape=(), dtype=np.str_),
            "image_id": F.Tensor(shape=(), dtype=np.str_),
            "source": F.Tensor(shape=(), dtype=np.str_),
            "task": F.ClassLabel(names=list(tokens.TASKS)),
            "prompt": F.Tensor(shape=(), dtype=np.str_),
            "answer": F.Tensor(shape=(), dtype=np.str_),
            "region": F.Tensor(shape=(), dtype=np.str_),
            "box": F.Tensor(shape=(4,), dtype=np.float32),
            "seg_concepts": F.Tensor(shape=(None,), dtype=np.str_),
            "det_label": F.Tensor(shape=(), dtype=np.int32),
            "cls_label": F.Tensor(shape=(), dtype=np.int32),
            "technique": F.Tensor(shape=(), dtype=np.str_),
            "explainer": F.Tensor(shape=(), dtype=np.str_),
            "image": F.Tensor(shape=(), dtype=np.object_),             # encoded, as given
            "region_masks_png": F.Tensor(shape=(None,), dtype=np.object_),    # one per [SEG]
            "artifact_masks_png": F.Tensor(shape=(None,), dtype=np.object_),  # one per [SEG]
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    build = Path(dl_manager.manual_dir)
    if not (build / "qa").is_dir():
      raise FileNotFoundError(f"{build}: not a `fifa data build` folder (no qa/)")
    return {s: self._generate_examples(build, s) for s in records.SPLITS if (build / "qa" / s).is_dir()}

  def _generate_examples(self, build: Path, split: str):
    # lazy: OpenCV only when examples are generated
    import cv2
    store = records.MaskStore(build / "masks")

    def png(m):
      return cv2.imencode(".png", m.astype(np.uint8) * 255)[1].tobytes()

    for shard in records.qa_shards(build, split):
      for rec in records.read_qa_records(shard):
        entry = store[rec.image_id]
        art = entry.artifact_mask()
        regions = [entry.region_mask(c) for c in rec.seg_concepts]
        yield rec.record_id, {
            "record_id": rec.record_id, "image_id": rec.image_id, "source": rec.source,
            "task": rec.task, "prompt": rec.prompt, "answer": rec.answer, "region": rec.region or "",
            "box": np.asarray(rec.box if rec.box else [-1] * 4, np.float32),
            "seg_concepts": np.asarray(rec.seg_concepts, dtype=np.object_).reshape(-1),
            "det_label": -1 if rec.det_label is None else rec.det_label,
            "cls_label": -1 if rec.cls_label is None else rec.cls_label,
            "technique": rec.technique or "", "explainer": rec.explainer or "",
            "image": entry.image,
            "region_masks_png": np.asarray([png(m) for m in regions], dtype=np.object_).reshape(-1),
            "artifact_masks_png": np.asarray([png(m & art) for m in regions], dtype=np.object_).reshape(-1),
        }
    store.close()


def prepare(build_dir: str | os.PathLike, data_dir: str | os.PathLike) -> Fifa11:
  """Convert a build folder into TFDS array_record files under `data_dir`."""
  b = Fifa11(data_dir=str(data_dir), file_format="array_record")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(build_dir)))
  return b
