"""`fifa serve`: FiFa over HTTP (FastAPI + uvicorn).

  POST /ask     JSON {"image": base64, "task" | "question", "region", "box", "faces"} or
                a multipart form (an `image` file and the same fields; `box` as
                "x1,y1,x2,y2") -> the answer in `fifa infer`'s answer.json schema.
                faces: "none" (the image is a face crop), "largest" (find the faces
                of a photo, answer about the largest) or "all" (-> {"faces": [answer,
                ...]}, largest first); the server's --faces sets the default
  GET  /health  {"status": "ok"}
  GET  /info    the checkpoint, tasks, limits, FICT concepts, the overlay palette
  GET  /        a web page (fifa_jax/web/index.html): upload a face, choose a task, pick a
                region, draw a box, see the answer coloured like its masks
  GET  /sample  the sample face offered by the page (`--sample`), if one was given

Concurrent requests are answered together: a single worker thread owns the model and
takes up to `max_batch` waiting queries per generation (padded to a power of two, so
that a handful of batch shapes compile).  Bad input is a 4xx with one line saying what
is wrong: 400 (not JSON, not an image, a bad query), 413 (body or image too large),
422 (no face, or none large enough), 503 (too many requests waiting).  Binds 127.0.0.1
unless told otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures as cf
import contextlib
import dataclasses
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from fifa_jax import fict, tokens
from fifa_jax.api import FaceError, FiFa, QueryError, on_photo, parse_query
from fifa_jax.infer import faces as faces_lib
from fifa_jax.infer import overlay
from fifa_jax.infer.predict import check_size

PAGE = Path(__file__).parent / "web" / "index.html"


@dataclasses.dataclass
class Limits:
  max_body_bytes: int = 16 * 2**20
  max_side: int = 4096  # pixels, either side of the decoded image
  max_batch: int = 8  # queries per generation
  max_waiting: int = 64  # queries queued before 503
  batch_wait_s: float = 0.01  # how long the worker waits to fill a batch
  faces: str = "none"  # the default of a request's `faces` field


class _Batcher:
  """One thread owns the model; requests queue (Query, Future) pairs."""

  def __init__(self, model: FiFa, limits: Limits):
    self.model, self.limits = model, limits
    self.queue: queue.Queue = queue.Queue(maxsize=limits.max_waiting)
    self.thread = threading.Thread(target=self._loop, name="fifa-serve-batcher", daemon=True)
    self.thread.start()

  def submit(self, parsed) -> cf.Future:
    fut: cf.Future = cf.Future()
    self.queue.put_nowait((parsed, fut))  # queue.Full -> 503
    return fut

  def _loop(self) -> None:
    while True:
      items = [self.queue.get()]
      try:
        while len(items) < self.limits.max_batch:
          items.append(self.queue.get(timeout=self.limits.batch_wait_s))
      except queue.Empty:
        pass
      parsed = [p for p, _ in items]
      # Pad to a power of two with copies of the last query: few shapes to compile.
      size = 1 << (len(parsed) - 1).bit_length()
      try:
        answers = self.model.answer(parsed + [parsed[-1]] * (size - len(parsed)))
      except Exception as e:  # noqa: BLE001 - every waiting request hears of it
        for _, fut in items:
          fut.set_exception(e)
        continue
      for (_, fut), answer in zip(items, answers):
        fut.set_result(answer)


def create_app(model: FiFa, limits: Limits = Limits(), sample: str | Path | None = None) -> FastAPI:
  """The app; `sample`: an image file the web page offers as its sample face."""
  app = FastAPI(title="FiFa", description="Fine-grained explainable deepfake analysis (FiFa-MLLM)")
  batcher = _Batcher(model, limits)
  page = PAGE.read_text()

  def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)

  @app.get("/health")
  def health() -> dict:
    return {"status": "ok"}

  @app.get("/info")
  def info() -> dict:
    cfg = model.config
    return {"checkpoint": model.loaded.source, "tasks": list(tokens.TASKS),
            "task_names": tokens.TASK_NAMES, "concepts": list(fict.NAMES),
            "image_size": cfg.image_size, "max_new_tokens": model.max_new_tokens,
            "limits": dataclasses.asdict(limits), "sample": sample is not None,
            "palette": [list(c) for c in overlay.palette(12)]}  # the PNG overlays' colours

  @app.get("/", response_class=HTMLResponse)
  def index() -> str:
    return page

  @app.get("/sample")
  def sample_face():
    if sample is None:
      return error(404, "this server offers no sample face (start it with --sample IMAGE)")
    return FileResponse(sample)

  @app.post("/ask")
  async def ask(request: Request):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
      if int(length) <= 2 * limits.max_body_bytes:
        # Read a body not far over the limit before answering: a client still sending
        # when the server answers and closes sees a reset instead of the 413.
        async for _ in request.stream():
          pass
      return error(413, f"request body of {int(length)} bytes exceeds the limit of "
                        f"{limits.max_body_bytes}")
    body = await request.body()
    if len(body) > limits.max_body_bytes:
      return error(413, f"request body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes}")
    try:
      fields, name = await _fields(request, body)
      mode = faces_lib.check_mode(str(fields.pop("faces", limits.faces)).lower())
    except QueryError as e:
      return error(400, str(e))
    try:  # from the header, before a small file decodes into a huge array
      check_size(fields["image"], "image", max_side=limits.max_side)
    except QueryError as e:
      return error(413, str(e))
    try:
      parsed = parse_query(fields)
    except QueryError as e:
      return error(400, str(e))
    h, w = parsed[0].rgb.shape[:2]
    if max(h, w) > limits.max_side:  # formats whose header PIL does not read
      return error(413, f"image of {w}x{h} pixels exceeds the limit of {limits.max_side} a side")
    if mode == "none":
      pairs, photo = [(None, parsed)], None
    else:
      fields["image"] = parsed[0].rgb  # decoded once
      try:  # the face finder is a helper process: wait for it off the event loop
        photo, pairs = await asyncio.to_thread(model.face_queries, fields, mode)
      except FaceError as e:
        return error(422, str(e))
    if batcher.queue.qsize() + len(pairs) > limits.max_waiting:
      return error(503, f"{limits.max_waiting} questions are already waiting; try again shortly")
    try:
      futures = [batcher.submit(p) for _, p in pairs]
    except queue.Full:
      return error(503, f"{limits.max_waiting} questions are already waiting; try again shortly")
    answers = [await asyncio.wrap_future(f) for f in futures]
    if mode == "none":
      return answers[0].to_json(name)
    on = [on_photo(a, f, photo).to_json(name) for a, (f, _) in zip(answers, pairs)]
    return on[0] if mode == "largest" else {"faces": on}

  return app


async def _fields(request: Request, body: bytes) -> tuple[dict, str]:
  """(the query's fields, the image's file name) from a JSON or multipart body, the
  image as its encoded bytes."""
  kind = request.headers.get("content-type", "")
  if kind.startswith("multipart/form-data"):
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
      raise QueryError("multipart body: the `image` field must be a file")
    fields = {k: v for k, v in form.items() if k != "image"}
    fields["image"] = await upload.read()
    fields["name"] = upload.filename or ""
    if "box" in fields:
      try:
        fields["box"] = [float(v) for v in str(fields["box"]).split(",")]
      except ValueError:
        raise QueryError(f"box {fields['box']!r} must be four numbers x1,y1,x2,y2") from None
  else:
    try:
      fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise QueryError("the request body is not JSON (send JSON with a base64 `image`, "
                       "or a multipart form)") from None
    if not isinstance(fields, dict):
      raise QueryError("the request body must be a JSON object")
    if not isinstance(fields.get("image"), str):
      raise QueryError("`image` must be a base64 string of an encoded image")
    try:
      fields["image"] = base64.b64decode(fields["image"], validate=True)
    except (binascii.Error, ValueError):
      raise QueryError("`image` is not valid base64") from None
  name = fields.pop("name", "")
  box = fields.get("box")
  if box is not None and (not isinstance(box, (list, tuple)) or len(box) != 4
                          or not all(isinstance(v, (int, float)) for v in box)):
    raise QueryError("box must be four numbers x1,y1,x2,y2")
  unknown = set(fields) - {"image", "task", "question", "region", "box", "faces"}
  if unknown:
    raise QueryError(f"unknown fields {sorted(unknown)}; expected image, task or question, region, "
                     "box, faces")
  return fields, name


@contextlib.contextmanager
def in_background(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
  """Run `app` on a free port in a thread of this process (tests, benchmarks, scripts);
  yields its base URL and stops it on exit."""
  import uvicorn  # lazy: only serving needs the server

  with socket.socket() as s:
    s.bind((host, 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    if not thread.is_alive():
      raise RuntimeError(f"the server on {host}:{port} did not start")
    time.sleep(0.05)
  try:
    yield f"http://{host}:{port}"
  finally:
    server.should_exit = True
    thread.join(timeout=10)


def serve(model: FiFa, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          sample: str | Path | None = None) -> None:
  import uvicorn  # lazy: only the serving command needs the server

  uvicorn.run(create_app(model, limits, sample), host=host, port=port, log_level="info")
