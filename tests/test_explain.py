"""Steps 3-4 explanations: the OpenAI-compatible client against a loopback server
(retries, cache, resume, usage), summary-tag parsing, the offline explainer."""

import json
import time

import pytest

from data_prep import explain as E
from llm_server import LoopbackLLM
from fifa_jax import fict, tokens


class _Server(LoopbackLLM):
  """Fails the first `fail_first` calls of each distinct prompt with `fail_code`, and
  always fails (503) prompts containing 'BROKEN'; otherwise echoes the prompt's length."""

  def __init__(self, fail_first=0, fail_code=500):
    self.seen: dict[str, int] = {}

    def respond(body):
      text = json.dumps(body["messages"])
      n = self.seen[text] = self.seen.get(text, 0) + 1
      if "BROKEN" in text:
        return 503, ""
      if n <= fail_first:
        return fail_code, ""
      return 200, f"echo {len(text)}"

    super().__init__(respond)


@pytest.fixture
def server():
  s = _Server(fail_first=2)
  yield s
  s.close()


def _client(url, cache, **kw):
  return E.ChatClient(url, "test-model", "sk-test", cache_dir=cache, backoff_s=0.0, **kw)


def _jobs(n, broken=()):
  return {f"j{i}": [{"role": "user", "content": f"question {i}{' BROKEN' if i in broken else ''}"}]
          for i in range(n)}


def test_retries_cache_and_usage(server, tmp_path):
  c = _client(server.url, tmp_path / "cache", concurrency=3)
  out = c.map(_jobs(5), progress=False)
  assert all(isinstance(v, str) and v.startswith("echo") for v in out.values())
  # Each prompt failed twice (HTTP 500) before it succeeded.
  assert c.usage.requests == 15 and c.usage.retries == 10 and c.usage.failures == 0
  assert c.usage.prompt_tokens == 50 and c.usage.completion_tokens == 15
  assert server.calls[0][0] == "/v1/chat/completions"
  assert server.calls[0][1] == "Bearer sk-test" and server.calls[0][2]["model"] == "test-model"
  # A rerun costs nothing: every answer comes from the on-disk cache.
  before = len(server.calls)
  again = _client(server.url, tmp_path / "cache")
  assert again.map(_jobs(5), progress=False) == out
  assert len(server.calls) == before and again.usage.cache_hits == 5
  assert "5 from cache" in again.usage.report()


def test_failures_are_recorded_and_a_rerun_resumes(tmp_path):
  s = _Server(fail_first=0)
  try:
    c = _client(s.url, tmp_path / "cache", max_retries=1)
    errors = []
    out = c.map(_jobs(4, broken={1, 3}), progress=False, on_result=lambda j, r, e: e and errors.append(j))
    assert sorted(errors) == ["j1", "j3"] and c.usage.failures == 2
    assert isinstance(out["j1"], E.ExplainError) and "gave up after 2 attempts" in str(out["j1"])
    assert not c.cached(_jobs(4, broken={1, 3})["j1"])  # nothing half-written for failures
    # The endpoint recovers; the resumed run asks only for what is missing.
    n = len(s.calls)
    again = _client(s.url, tmp_path / "cache")
    res = again.map(_jobs(4), progress=False)
    assert all(isinstance(v, str) for v in res.values())
    assert again.usage.cache_hits == 2 and len(s.calls) - n == 2
  finally:
    s.close()


def test_retry_after_is_capped_by_max_backoff(tmp_path):
  # The server asks for an hour's wait on its first answer; max_backoff_s bounds it.
  calls = []
  s = LoopbackLLM(lambda body: (429, "") if not calls.append(1) and len(calls) == 1 else (200, "ok"),
                  retry_after="3600")
  try:
    c = E.ChatClient(s.url, "m", cache_dir=None, backoff_s=0.0, max_backoff_s=0.05)
    t0 = time.monotonic()
    assert c.chat([{"role": "user", "content": "hi"}]) == "ok"
    assert time.monotonic() - t0 < 30 and c.usage.retries == 1
  finally:
    s.close()


def test_client_errors_are_not_retried(tmp_path):
  s = _Server(fail_first=99, fail_code=401)
  try:
    c = _client(s.url, None)
    with pytest.raises(E.ExplainError, match="HTTP 401"):
      c.chat([{"role": "user", "content": "hi"}])
    assert c.usage.requests == 1 and c.usage.retries == 0
  finally:
    s.close()


def test_configuration_from_environment(monkeypatch):
  monkeypatch.delenv("FIFA_LLM_BASE_URL", raising=False)
  monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
  with pytest.raises(ValueError, match="FIFA_LLM_BASE_URL"):
    E.ChatClient(model="m")
  monkeypatch.setenv("FIFA_LLM_BASE_URL", "http://127.0.0.1:9/v1/")
  monkeypatch.setenv("FIFA_LLM_MODEL", "gpt-x")
  c = E.ChatClient()
  assert c.base_url == "http://127.0.0.1:9/v1" and c.model == "gpt-x"


def test_prompts_match_the_paper():
  msgs = E.step3_messages(b"png-a", b"png-b", ["nasion", "upper lip"])
  parts = msgs[0]["content"]
  assert "All the following areas MUST be discussed:\n\nnasion\nupper lip\n" in parts[0]["text"]
  assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
  assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
  text = E.step4_messages({"nasion": "Blurred.", "upper lip": "Too red."})[0]["content"]
  assert text.endswith("Input: Descriptions\n nasion: Blurred.\n upper lip: Too red.\n\n"
                       "Index Numbers\n nasion: 0\n upper lip: 1")


def test_parse_step3():
  text = "[nasion]: Looks blurred.\n**upper lip**: Too red and flat.\nSomething else: ignored"
  assert E.parse_step3(text, ["nasion", "upper lip"]) == {
      "nasion": "Looks blurred.", "upper lip": "Too red and flat."}
  with pytest.raises(E.ExplainError, match="does not discuss \\['chin'\\]"):
    E.parse_step3(text, ["nasion", "chin"])


def test_parse_summary_binds_each_seg_to_its_concept():
  concepts = ["left part of chin", "right part of chin", "edges of chin"]
  summary = ("The <0> left side of the chin </0> is uniform, while the <2> chin's edges </2> are "
             "distorted and the <1> right chin area </1> is dark.")
  answer, segs = E.parse_summary(summary, concepts)
  assert answer == ("The <p>left side of the chin</p>[SEG] is uniform, while the <p>chin's edges</p>[SEG] "
                    "are distorted and the <p>right chin area</p>[SEG] is dark.")
  assert segs == ["left part of chin", "edges of chin", "right part of chin"]
  assert tokens.count_segs(answer) == len(segs)


@pytest.mark.parametrize("summary, reason", [
    ("The <0> chin </0> only.", "not tagged"),
    ("The <0> chin </0> and <1> lip </1> and <2> x </2> and <3> y </3>.", "out of range"),
    ("The <0> chin <1> lip </1> </0>.", "opens inside"),
    ("The <0> chin </1> and <1> lip </0>.", "closes"),
    ("The <0> chin </0>, <1> lip </1>, <2> x", "never closed"),
    ("The <0> chin </0>, <0> again </0>, <1> a </1> <2> b </2>", "tagged twice"),
    ("The <0> </0>, <1> a </1> <2> b </2>", "no phrase"),
])
def test_parse_summary_rejects_mismatched_tags(summary, reason):
  with pytest.raises(E.ExplainError, match=reason):
    E.parse_summary(summary, ["a", "b", "c"])


def test_offline_explainer_is_deterministic_and_parses():
  ex = E.OfflineExplainer()
  stats = {"nasion": (0.6, 900), "upper lip": (0.15, 120), "upper part of left cheek": (0.3, 2000)}
  d1, d2 = ex.describe("img7", stats), ex.describe("img7", stats)
  assert d1 == d2 and list(d1) == list(stats)
  answer, segs = E.parse_summary(ex.summarize(d1), list(d1))
  assert segs == list(stats) and tokens.count_segs(answer) == 3
  assert all(fict.is_atomic(c) for c in segs)
  assert E.parse_step3("\n".join(f"[{c}]: {t}" for c, t in d1.items()), list(d1)) == d1
