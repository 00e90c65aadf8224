"""Forgery explanations, Steps 3 and 4 of FiFa-Annotator (Section 3.2, Tables 13-14).

* `ChatClient`: any OpenAI-compatible `/chat/completions` endpoint that accepts
  images.  Base URL, model and key come from the environment
  (FIFA_LLM_BASE_URL, FIFA_LLM_MODEL, FIFA_LLM_API_KEY; OPENAI_BASE_URL and
  OPENAI_API_KEY also work).  Bounded concurrency, retries with exponential
  backoff (429, 5xx, connection errors; Retry-After honoured), and a persistent
  on-disk cache keyed by the request, so a rerun, or a run resumed after an
  interruption, pays only for what is not cached yet.  `usage` reports requests,
  cache hits, retries, failures and tokens.
* `OfflineExplainer`: a deterministic template explainer over concept names and
  artifact statistics, for tests and the demo.  Its text is not an LLM's and
  says nothing a person checked; records made with it carry its name.
* `parse_step3` / `parse_summary`: the Step 3 "[area]: [description]" lines,
  and the Step 4 summary whose `<i> phrase </i>` index tags become
  `<p>phrase</p>[SEG]`, each [SEG] bound to its Atomic Concept.  A summary whose
  tags do not match its concept list is rejected with the reason.

Standard library only: runs in either environment.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fifa_jax import tokens

P_OPEN, P_CLOSE, SEG = "<p>", "</p>", "[SEG]"

# Table 13 (Step 3).  {concept_list} is the artifact-existing Atomic Concepts.
STEP3_PROMPT = """\
You are an AI visual assistant that helps humans analyze some images of human faces that have been tampered with by deepfake. You will receive two images, the first is the image A of the face tampered by deepfake and the second is the binary mask image B of the tampered area (a value of 1 (white) indicates the tampered area and a value of 0 (black) indicates the untampered area).

Now, your task is to describe the visible details (artifacts) of the tampered area in the image, using the binary masks provided for the tampered regions of the deepfake tampered image A and image B. In your answer, please describe the tampered image based on the highlighted area of the binary mask, but do not mention the binary mask. Always assume that you are just looking at the tampered image. Responses should identify the tampered areas and corresponding detailed descriptions of the forgery in those areas. Use the format [tampered area]: [detailed forgery description].

All the following areas MUST be discussed:

{concept_list}

Please analyze each area in one sentence.

When providing detailed forgery descriptions, consider the visible details caused by tampering from these perspectives, but do not give an ambiguous, unclear description that is otherwise challenging:

1. Symmetrical Facial Features: Deepfake-generated faces may exhibit unnaturally perfect symmetry, lacking the subtle asymmetry typically found in real faces.
2. Blur or Distortion Around Edges: Deepfake manipulation may introduce blur or distortion around the edges of the face where the manipulation has taken place, especially if the face has been digitally overlaid onto another body.
3. Inconsistent Lighting and Shadows: Deepfake algorithms may struggle to accurately match the lighting and shadows in the original image, leading to discrepancies in lighting direction or intensity across the face.
4. Unnatural Facial Expressions: Deepfakes may produce facial expressions that appear unnatural, exaggerated, or out of sync with the rest of the image.
5. Mismatched Facial Proportions: Deepfake manipulation may result in facial proportions that are inconsistent with the person's gender or age, such as a man's face on a woman's body or vice versa.
6. Inconsistent Skin Texture and Tone: Deepfake-generated faces may exhibit unnatural skin texture or tone, such as overly smooth or pixelated skin, that differs from the surrounding areas.
7. Missing or Inconsistent Eye Reflections: Deepfake manipulation may result in missing or inconsistent reflections in the eyes, which can provide clues about the authenticity of the image.
8. Change hairstyle: Some deepfake algorithms only tamper with hair and may change hair color and hairstyle, or add long hair for boys and short hair for girls.
9. Irregularities in Makeup Application: Deepfake manipulation may introduce makeup styles that are inconsistent with the person's gender or age, or exhibit poor application quality.
10. Contextual Inconsistencies: Deepfake-generated images may contain inconsistencies in the overall context of the image, such as discrepancies in perspective, clothing, or surroundings, that suggest manipulation.
11. Unreasonable accessories: Some deepfake algorithms add glasses, earrings, hats, masks, etc. to the image, and the edges, lighting relationships, and perspective of these accessories may be incorrect.
12. If there are glasses or sunglasses in the picture, please pay special attention to whether the glasses or sunglasses have been tampered with or not, the rims, frames, temples, lenses, etc. of the glasses are very susceptible to imperfections and problems."""

# Table 14 (Steps 4 and 5).  [input] is `step4_input(...)`.
STEP4_PROMPT = """\
Summarize the descriptions of face forgery areas into a paragraph to make it as clear as possible. The face region words in the summary can be more diverse, but the semantic consistency must be guaranteed. An index number will be provided for each face forgery area. Please indicate the index number in the summary.

Here is an example:

Input:
Descriptions
 left part of chin: Displays inconsistency in skin texture, appearing artificially uniform.
 right part of chin: Exhibits disproportionate shadowing inconsistent with light sources.
 edges of chin: Subtle distortions suggest digital manipulation at the boundaries.
 nasolabial fold of left side: Appears unnaturally softened, lacking typical depth.
 nasolabial fold of right side: Exhibits lack of natural shading and depth variation.

Index Numbers
 left part of chin: 0
 right part of chin: 1
 edges of chin: 2
 nasolabial fold of left side: 3
 nasolabial fold of right side: 4

Summary:
 The <0> left side of the chin </0> reveals an unnaturally uniform skin texture, while the <1> right chin area </1> exhibits disproportionate shadowing that contradicts expected lighting. The <2> chin's edges </2> display subtle distortions, indicating possible digital manipulation. Additionally, the <3> left nasolabial fold </3> appears overly smoothed, lacking natural depth, whereas the <4> right nasolabial region </4> fails to show proper shading and depth variation.

Input: [input]"""


class ExplainError(ValueError):
  """A response that cannot be used; the message says why."""


# ---------------------------------------------------------------------------
# Prompts and parsing


def image_part(png: bytes, mime: str = "image/png") -> dict[str, Any]:
  """An OpenAI-style image content part (a data URL: nothing is uploaded elsewhere)."""
  return {"type": "image_url",
          "image_url": {"url": f"data:{mime};base64,{base64.b64encode(png).decode()}"}}


def step3_messages(fake_png: bytes, mask_png: bytes, concepts: Sequence[str]) -> list[dict]:
  text = STEP3_PROMPT.format(concept_list="\n".join(concepts))
  return [{"role": "user", "content": [{"type": "text", "text": text},
                                       image_part(fake_png), image_part(mask_png)]}]


def step4_input(descriptions: Mapping[str, str]) -> str:
  lines = ["Descriptions"] + [f" {c}: {d}" for c, d in descriptions.items()]
  lines += ["", "Index Numbers"] + [f" {c}: {i}" for i, c in enumerate(descriptions)]
  return "\n".join(lines)


def step4_messages(descriptions: Mapping[str, str]) -> list[dict]:
  return [{"role": "user", "content": STEP4_PROMPT.replace("[input]", step4_input(descriptions))}]


def parse_step3(text: str, concepts: Sequence[str]) -> dict[str, str]:
  """`[area]: [description]` lines -> {concept: description}, all concepts required."""
  want = {c.lower(): c for c in concepts}
  out: dict[str, str] = {}
  for line in text.splitlines():
    m = re.match(r"\s*(?:[-*\d.]+\s*)?\[?\**([^:\]\*]+?)\**\]?\s*:\s*(.+)", line)
    if m and m.group(1).strip().lower() in want:
      out[want[m.group(1).strip().lower()]] = m.group(2).strip().strip("[]").strip()
  missing = [c for c in concepts if c not in out]
  if missing:
    raise ExplainError(f"Step 3 response does not discuss {missing}")
  return {c: out[c] for c in concepts}


_TAG = re.compile(r"<(/?)(\d+)>")


def parse_summary(summary: str, concepts: Sequence[str]) -> tuple[str, list[str]]:
  """Turn `<i> phrase </i>` tags into `<p>phrase</p>[SEG]`.

  Returns (answer, seg_concepts) with seg_concepts[k] the Atomic Concept of the
  k-th [SEG].  Every index must be tagged exactly once, open before close,
  never nested, within range.
  """
  if P_OPEN in summary or SEG in summary:
    raise ExplainError("summary already contains <p> or [SEG] markers")
  out, segs, pos, open_idx, open_at = [], [], 0, None, 0
  seen: set[int] = set()
  for m in _TAG.finditer(summary):
    closing, idx = m.group(1) == "/", int(m.group(2))
    if idx >= len(concepts):
      raise ExplainError(f"tag <{idx}> is out of range for {len(concepts)} concepts")
    if not closing:
      if open_idx is not None:
        raise ExplainError(f"tag <{idx}> opens inside <{open_idx}>")
      if idx in seen:
        raise ExplainError(f"index {idx} is tagged twice")
      out.append(summary[pos:m.start()])
      open_idx, open_at = idx, m.end()
    else:
      if open_idx != idx:
        raise ExplainError(f"</{idx}> closes " + (f"<{open_idx}>" if open_idx is not None else "nothing"))
      phrase = summary[open_at:m.start()].strip()
      if not phrase:
        raise ExplainError(f"tag <{idx}> holds no phrase")
      out.append(f"{P_OPEN}{phrase}{P_CLOSE}{SEG}")
      segs.append(concepts[idx])
      seen.add(idx)
      open_idx = None
    pos = m.end()
  if open_idx is not None:
    raise ExplainError(f"tag <{open_idx}> is never closed")
  missing = [i for i in range(len(concepts)) if i not in seen]
  if missing:
    raise ExplainError(f"indices {missing} ({[concepts[i] for i in missing]}) are not tagged")
  out.append(summary[pos:])
  answer = re.sub(r"[ \t]+", " ", "".join(out)).strip()
  return answer, segs


# ---------------------------------------------------------------------------
# The client


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
      delay = wait if wait is not None else min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
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
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="req", disable=not enabled)
  except ImportError:  # tqdm is in both environments; this keeps the module stdlib-only
    class _Null:
      def update(self, n): pass
      def close(self): pass
    return _Null()


# ---------------------------------------------------------------------------
# The offline explainer


class OfflineExplainer:
  """Deterministic template explanations for tests and the demo (no LLM).

  `describe` plays Step 3 and `summarize` plays Steps 4/5, from the concept
  names and per-concept artifact statistics (coverage ratio, pixel count).
  """

  name = "offline-template"

  _ADJ = tokens.EXPLAIN_ADJECTIVES
  _EVIDENCE = tokens.EXPLAIN_EVIDENCE

  def _pick(self, options: Sequence[str], *keys: Any) -> str:
    h = hashlib.sha256("|".join(map(str, keys)).encode()).digest()
    return options[h[0] % len(options)]

  def describe(self, image_id: str, stats: Mapping[str, tuple[float, int]]) -> dict[str, str]:
    """{concept: one-sentence description}; stats[c] = (coverage ratio, artifact pixels)."""
    out = {}
    for c, (ratio, pixels) in stats.items():
      adj = self._pick(self._ADJ, image_id, c)
      ev = self._pick(self._EVIDENCE, image_id, c, "e")
      out[c] = tokens.explain_sentence(adj, ev, ratio, pixels)
    return out

  def summarize(self, descriptions: Mapping[str, str]) -> str:
    """A Step 4 style summary carrying `<i> phrase </i>` tags for every concept."""
    sentences = []
    for i, (c, d) in enumerate(descriptions.items()):
      body = (d[0].lower() + d[1:]) if d else "looks manipulated"
      sentences.append(f"The <{i}> {c} </{i}> {body}")
    return " ".join(s if s.endswith(".") else s + "." for s in sentences)
