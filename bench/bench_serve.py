"""Latency of `fifa serve` under load: N requests at concurrency C on loopback.

  .venv/bin/python bench/bench_serve.py --checkpoint demo_out/train [--requests 200] [--concurrency 8]

Starts the server in this process (uvicorn in a thread), warms up the batch shapes, then
times every request end to end.  Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import contextlib
import json
import time
import urllib.request

import cv2
import numpy as np

from fifa_jax import api, serve as serve_lib


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--image", default=None, help="face image (default: random pixels)")
  p.add_argument("--requests", type=int, default=200)
  p.add_argument("--concurrency", type=int, default=8)
  p.add_argument("--max-new-tokens", type=int, default=32)
  p.add_argument("--tasks", default="det,cls,i-loc,i-age")
  a = p.parse_args(argv)
  model = api.FiFa.load(a.checkpoint, max_new_tokens=a.max_new_tokens)
  stack = contextlib.ExitStack()  # the server stops when the measurement is done
  url = stack.enter_context(serve_lib.in_background(serve_lib.create_app(model)))
  rgb = (api.to_rgb(a.image) if a.image else
         np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
  image = base64.b64encode(cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()).decode()
  tasks = a.tasks.split(",")

  def one(i: int) -> float:
    body = json.dumps({"image": image, "task": tasks[i % len(tasks)]}).encode()
    req = urllib.request.Request(url + "/ask", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
      r.read()
    return time.perf_counter() - t0

  with cf.ThreadPoolExecutor(a.concurrency) as pool:  # warm-up: every batch shape compiles
    list(pool.map(one, range(4 * a.concurrency)))
  t0 = time.perf_counter()
  with cf.ThreadPoolExecutor(a.concurrency) as pool:
    lat = np.asarray(list(pool.map(one, range(a.requests)))) * 1e3
  wall = time.perf_counter() - t0
  print(f"{a.requests} requests at concurrency {a.concurrency} ({model.loaded.source}, "
        f"{a.max_new_tokens} new tokens): p50 {np.percentile(lat, 50):.0f} ms, "
        f"p95 {np.percentile(lat, 95):.0f} ms, {a.requests / wall:.1f} requests/s")
  stack.close()
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
