"""The 7B path streams: a checkpoint with Vicuna-7B's key layout (32 layers, every
name, vocab 32000) and shrunken widths converts without a second full copy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import convert_memory  # noqa: E402


@pytest.mark.slow
def test_peak_host_memory_stays_below_one_and_a_half_checkpoints():
  r = convert_memory.run(hidden=384, intermediate=1024, vocab=32000)
  size = r["checkpoint_bytes"]
  print(f"checkpoint {size / 2**20:.0f} MiB in {r['shards']} shards; load peak "
        f"{r['load_peak_over_baseline'] / size:.2f}x, loaded model {r['rss_after_load'] / size:.2f}x, "
        f"save peak over loaded {r['save_peak_over_loaded'] / size:.2f}x")
  assert r["shards"] > 1 and r["layers"] == 32
  assert r["load_peak_over_baseline"] < 1.5 * size  # the model (1x) plus about one tensor
  assert r["save_peak_over_loaded"] < 0.5 * size  # export writes tensor by tensor
