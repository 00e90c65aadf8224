"""An OpenAI-compatible `/chat/completions` client: the annotator's explanations and
Deepfake-Agent's proposers, adjudicator and prompted aggregator.

Base URL, model and key come from the arguments or the environment
(FIFA_LLM_BASE_URL, FIFA_LLM_MODEL, FIFA_LLM_API_KEY; OPENAI_BASE_URL and
OPENAI_API_KEY also work).  Bounded concurrency, retries with exponential backoff
(429, 5xx, connection errors; a Retry-After header is honoured up to
`max_backoff_s`), and a persistent on-disk cache keyed by the request, so a rerun,
or a run resumed after an interruption, pays only for what is not cached yet.
`usage` reports requests, cache hits, retries, failures and tokens.

Standard library and tqdm only: data_prep (its own environment) uses it too.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import http.server
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm


class ExplainError(ValueError):
  """A response that cannot be used; the message says why."""


@dataclasses.dataclass
class Usage:
  requests: int = 0
  cache_hits: int = 0
  retries: int = 0
  failures: int = 0
  prompt_tokens: int = 0
  completion_tokens: int = 0

  def report(self) -> str:
    return (f"{self.requests} requests, {self.cache_hits} from cache, {self.retries} retries, "
            f"{self.failures} failed; tokens: {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion")


class ChatClient:
  """An OpenAI-compatible chat client with a persistent cache and retries."""

  def __init__(self, base_url: str | None = None, model: str | None = None,
               api_key: str | None = None, *, cache_dir: str | os.PathLike | None = None,
               concurrency: int = 4, max_retries: int = 5, backoff_s: float = 1.0,
               max_backoff_s: float = 60.0, timeout_s: float = 120.0,
               temperature: float = 0.2, max_tokens: int = 1024):
    env = os.environ
    self.base_url = (base_url or env.get("FIFA_LLM_BASE_URL") or env.get("OPENAI_BASE_URL") or "").rstrip("/")
    self.model = model or env.get("FIFA_LLM_MODEL") or ""
    self.api_key = api_key or env.get("FIFA_LLM_API_KEY") or env.get("OPENAI_API_KEY") or ""
    if not self.base_url:
      raise ValueError("no LLM endpoint: set FIFA_LLM_BASE_URL (e.g. http://localhost:8000/v1)")
    if not self.model:
      raise ValueError("no LLM model: set FIFA_LLM_MODEL")
    self.cache_dir = Path(cache_dir) if cache_dir else None
    self.concurrency = max(1, concurrency)
    self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
    self.timeout_s, self.temperature, self.max_tokens = timeout_s, temperature, max_tokens
    self.usage = Usage()
    self._lock = threading.Lock()

  # Cache: one JSON file per request key, written atomically.

  def request_body(self, messages: list[dict]) -> dict[str, Any]:
    return {"model": self.model, "messages": messages, "temperature": self.temperature,
            "max_tokens": self.max_tokens}

  def cache_key(self, messages: list[dict]) -> str:
    blob = json.dumps(self.request_body(messages), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{self.base_url}\n{blob}".encode()).hexdigest()

  def _cache_path(self, key: str) -> Path | None:
    return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

  def cached(self, messages: list[dict]) -> str | None:
    path = self._cache_path(self.cache_key(messages))
    if path and path.is_file():
      return json.loads(path.read_text())["content"]
    return None

  def _store(self, key: str, content: str, usage: Mapping[str, Any]) -> None:
    path = self._cache_path(key)
    if path is None:
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"content": content, "usage": dict(usage), "model": self.model}))
    os.replace(tmp, path)

  # Requests.

  def chat(self, messages: list[dict]) -> str:
    """One completion, from the cache when present."""
    key = self.cache_key(messages)
    hit = self.cached(messages)
    if hit is not None:
      with self._lock:
        self.usage.cache_hits += 1
      return hit
    body = json.dumps(self.request_body(messages)).encode()
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    url = f"{self.base_url}/chat/completions"
    for attempt in range(self.max_retries + 1):
      wait = None
      try:
        with self._lock:
          self.usage.requests += 1
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
          data = json.loads(resp.read())
        content = data["choices"][0]["message"]["content"]
        usage = data.get("usage") or {}
        with self._lock:
          self.usage.prompt_tokens += int(usage.get("prompt_tokens", 0))
          self.usage.completion_tokens += int(usage.get("completion_tokens", 0))
        self._store(key, content, usage)
        return content
      except urllib.error.HTTPError as e:
        if e.code != 429 and e.code < 500:  # a client error will not get better
          raise ExplainError(f"{url}: HTTP {e.code}: {e.read()[:300]!r}") from None
        err = f"HTTP {e.code}"
        wait = _retry_after(e.headers.get("Retry-After"))
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        err = f"{type(e).__name__}: {e}"
      except (KeyError, IndexError, json.JSONDecodeError) as e:
        err = f"malformed response ({e})"
      if attempt == self.max_retries:
        break
      with self._lock:
        self.usage.retries += 1
      # A server's Retry-After is honoured up to max_backoff_s: one header must not stall a worker.
      delay = min(self.max_backoff_s, wait if wait is not None else self.backoff_s * 2 ** attempt)
      time.sleep(delay * (1 + 0.1 * random.random()))
    raise ExplainError(f"{url}: gave up after {self.max_retries + 1} attempts ({err})")

  def map(self, jobs: Mapping[str, list[dict]], *, progress: bool = True,
          on_result: Callable[[str, str | None, str | None], None] | None = None
          ) -> dict[str, str | Exception]:
    """Run many requests with at most `concurrency` in flight.

    Returns {job id: content or the exception}; a failed job does not stop the
    others.  `on_result(job_id, content, error)` is called as each ends.
    """
    results: dict[str, str | Exception] = {}
    bar = _progress(len(jobs), "explanations", progress)
    with cf.ThreadPoolExecutor(self.concurrency) as pool:
      futures = {pool.submit(self.chat, msgs): jid for jid, msgs in jobs.items()}
      for fut in cf.as_completed(futures):
        jid = futures[fut]
        try:
          results[jid] = fut.result()
          if on_result:
            on_result(jid, results[jid], None)
        except Exception as e:  # noqa: BLE001 - recorded per job
          with self._lock:
            self.usage.failures += 1
          results[jid] = e
          if on_result:
            on_result(jid, None, str(e))
        bar.update(1)
    bar.close()
    return results


def _retry_after(value: str | None) -> float | None:
  try:
    return max(0.0, float(value)) if value else None
  except ValueError:
    return None


def _progress(total: int, desc: str, enabled: bool):
  try:
      return tqdm(total=total, desc=desc, unit="req", disable=not enabled)
  except ImportError:  # tqdm is in both environments; this keeps the module stdlib-only
    class _Null:
      def update(self, n): pass
      def close(self): pass
    return _Null()


class LocalChatServer:
  """A `/v1/chat/completions` server on 127.0.0.1 that answers with `respond(body) ->
  (HTTP status, reply text)`: the offline stand-in for an endpoint (the agent's scripted
  semantic expert, the tests).  A non-200 status is sent with `Retry-After: retry_after`;
  `calls` records (path, Authorization header, body) per request."""

  def __init__(self, respond: Callable[[dict], tuple[int, str]], retry_after: str = "0",
               usage: Mapping[str, int] | None = None):
    self.calls: list[tuple[str, str | None, dict]] = []
    outer = self
    usage = dict(usage or {"prompt_tokens": 10, "completion_tokens": 3})

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *a):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        outer.calls.append((self.path, self.headers.get("Authorization"), body))
        status, text = respond(body)
        if status != 200:
          self.send_response(status)
          self.send_header("Retry-After", retry_after)
          self.end_headers()
          return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                           "usage": usage}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
