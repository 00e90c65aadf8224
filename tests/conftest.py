"""Test set-up: 8 host CPU devices for the sharding tests, float32 matmuls."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402  (after the environment above, which jax reads on import)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

# The longest files first: `make test` hands whole files to two xdist workers in collection
# order, so starting these early keeps one of them from finishing alone at the end
# (longest-processing-time-first).  Measured with `make test PYTEST_ARGS=--durations=45`.
LONGEST_FIRST = ("test_learning.py", "test_train_resume.py", "test_train_step.py",
                 "test_fifa.py", "test_plan.py", "test_agent_train.py", "test_infer_eval.py",
                 "test_mesh_infer.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
  """A run folder as `fifa train` leaves it: config.yaml + checkpoints/<step>/ (no
  training), its toy data and its state.  Shared by the inference, evaluation and API
  tests, so that their generations compile once."""
  import jax
  from fifa_jax import checkpoint as ckpt_lib, config, mesh as mesh_lib
  from fifa_jax.data import toy
  from fifa_jax.train import state as state_lib

  base = tmp_path_factory.mktemp("infer")
  data = toy.write_toy_dataset(base / "data", n_images=4, splits=("test",))
  cfg = config.load(ROOT / "configs/tiny_cpu.yaml", [f"data.root={data}"])
  work = base / "run"
  work.mkdir()
  (work / "config.yaml").write_text(config.dump(cfg))
  setup = state_lib.make_setup(cfg, config.model_config(cfg), mesh_lib.make_mesh(devices=jax.devices()[:1]))
  state = state_lib.init_state(setup, 7)
  ck = ckpt_lib.Checkpointer(work / "checkpoints", keep=1, async_save=False)
  ck.save(3, state, {}, {"step": 3})
  ck.close()
  return work, data, jax.device_get(state)
