"""Deepfake-Agent's experts and its commands, offline.

The semantic expert talks to a loopback OpenAI-compatible server scripted per role
(the role is the request's model name): the prompts are the supplement's, the
parameters its own, the adjudicator sees both proposals, the occluded image differs
from the original only inside the box, every stop rule fires, 429/500 are retried and
a cached rerun sends nothing.  The face expert runs a tiny model on photos with and
without a face; the command expert runs a stand-in script; `fifa agent` runs end to end.
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fifa_jax.agent import evaluate, experts, parse, prompts, run, semantic
from fifa_jax.agent import reports as reports_lib
from fifa_jax.agent.reports import Report, abstain, read_reports, write_reports
from fifa_jax.cli import app
from llm_server import LoopbackLLM

H, W = 96, 128
BOX = [40, 20, 90, 70]


def picture(seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 255, (H, W, 3), np.uint8)


def decode_image(body) -> np.ndarray:
  url = next(part["image_url"]["url"] for part in body["messages"][0]["content"] if part["type"] == "image_url")
  png = base64.b64decode(url.split(",", 1)[1])
  return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def prompt_of(body) -> str:
  return body["messages"][0]["content"][0]["text"]


class Script:
  """Answers per role, in order; a role's list may hold (status, text) for failures."""

  def __init__(self, **answers):
    self.answers = {role: list(v) for role, v in answers.items()}

  def __call__(self, body):
    a = self.answers[body["model"]].pop(0)
    return a if isinstance(a, tuple) else (200, a)


PROPOSE_FAKE = "Decision: fake Reasoning: The shadow falls the wrong way."
PROPOSE_REAL = "**Decision:** [real]\nReasoning: Nothing contradicts physics."
ADJ_FAKE = f"Decision: fake Reasoning: The shadow is wrong. Bounding Box: [{','.join(map(str, BOX))}]"
ADJ_REAL = "Decision: real Reasoning: Both readings are weak. Bounding Box: none"


def verify(decision, verdict, box=None):
  return (f"Decision: {decision}\nReasoning: Without the box it looks {'fine' if decision == 'real' else 'odd'}.\n"
          f"Verification: {verdict}" + (f"\nBounding Box: [{','.join(map(str, box))}]" if box else ""))


def expert(server, tmp_path=None, **kw) -> semantic.SemanticExpert:
  role = lambda model: semantic.Role(base_url=server.url, model=model, api_key_env="FIFA_TEST_KEY")
  config = semantic.SemanticConfig(proposers=(role("p1"), role("p2")), adjudicator=role("adj"),
                                   cache_dir=str(tmp_path / "cache") if tmp_path else None, **kw)
  e = semantic.SemanticExpert(config)
  for c in (*e.proposers, e.adjudicator):
    c.backoff_s = 0.0
  return e


@pytest.fixture
def loopback():
  servers = []

  def start(script):
    servers.append(LoopbackLLM(script))
    return servers[-1]
  yield start
  for s in servers:
    s.close()


# -- the semantic expert ------------------------------------------------------


def test_prompts_parameters_proposals_and_occlusion_reach_the_endpoint(loopback, monkeypatch):
  monkeypatch.setenv("FIFA_TEST_KEY", "sk-test")
  server = loopback(Script(p1=[PROPOSE_FAKE], p2=[PROPOSE_REAL],
                           adj=[ADJ_FAKE, verify("fake", "confirmed")]))
  image = picture()
  r = expert(server).report("x.png", image)
  assert (r.label, r.boxes, r.meta["stop"]) == ("fake", [BOX], "confirmed")
  calls = [body for _, _, body in server.calls]
  assert all(auth == "Bearer sk-test" for _, auth, _ in server.calls)
  assert all((b["temperature"], b["max_tokens"]) == (0.1, 512) for b in calls)
  proposals = [b for b in calls if b["model"] in ("p1", "p2")]
  assert sorted(b["model"] for b in proposals) == ["p1", "p2"]
  assert all(prompt_of(b) == prompts.PROPOSER for b in proposals)
  assert all(np.array_equal(decode_image(b), image) for b in calls[:3])
  first, second = [b for b in calls if b["model"] == "adj"]
  assert prompt_of(first) == prompts.adjudicator(parse.proposal(PROPOSE_FAKE), parse.proposal(PROPOSE_REAL))
  for said in ("The shadow falls the wrong way.", "Nothing contradicts physics.", "Decision: fake", "Decision: real"):
    assert said in prompt_of(first)
  assert prompt_of(second) == prompts.verification(parse.adjudication(ADJ_FAKE))
  hidden = decode_image(second)
  x1, y1, x2, y2 = BOX
  outside = np.ones((H, W), bool)
  outside[y1:y2, x1:x2] = False
  assert np.array_equal(hidden[outside], image[outside])
  assert (hidden[y1:y2, x1:x2] == np.round(image.reshape(-1, 3).mean(0))).all()


@pytest.mark.parametrize("how", semantic.OCCLUSIONS)
def test_occlusion_changes_only_the_box(how):
  image = picture(1)
  hidden = semantic.occlude(image, [10.4, 5.0, 50.2, 40.0], how)
  inside = np.zeros((H, W), bool)
  inside[5:40, 10:51] = True
  assert np.array_equal(hidden[~inside], image[~inside])
  assert np.abs(hidden[inside].astype(int) - image[inside]).mean() > 20  # the noise is gone
  with pytest.raises(ValueError, match="outside the 128x96 image"):
    semantic.occlude(image, [200, 10, 220, 30], how)


@pytest.mark.parametrize("adjudicator, rounds, stop, label, boxes", [
    ([ADJ_REAL], 0, "real verdict", "real", []),
    ([ADJ_FAKE, verify("real", "refuted")], 1, "refuted", "real", []),
    ([ADJ_FAKE, verify("fake", "confirmed")], 1, "confirmed", "fake", [BOX]),
    # a confirmed box that moves is checked again; then it holds
    ([ADJ_FAKE, verify("fake", "confirmed", [50, 30, 80, 60]), verify("fake", "confirmed", [50, 30, 80, 61])],
     2, "confirmed", "fake", [[50, 30, 80, 61]]),
    # refuted but still fake: on, with the same box, until the rounds run out
    ([ADJ_FAKE] + [verify("fake", "refuted")] * 3, 3, "max rounds", "fake", [BOX]),
])
def test_every_stop_rule(loopback, adjudicator, rounds, stop, label, boxes):
  server = loopback(Script(p1=[PROPOSE_FAKE], p2=[PROPOSE_FAKE], adj=adjudicator))
  r = expert(server).report("x.png", picture())
  assert (r.label, r.meta["stop"], r.boxes) == (label, stop, boxes)
  assert len(r.meta["rounds"]) == rounds + 1 and r.p_fake is None
  # each round occludes the box in force: the last one named
  in_force = r.meta["rounds"][0]["box"]
  for rnd in r.meta["rounds"][1:]:
    assert rnd["occluded"] == in_force
    in_force = rnd["box"] or in_force


def test_max_rounds_is_a_setting(loopback):
  server = loopback(Script(p1=[PROPOSE_FAKE], p2=[PROPOSE_FAKE], adj=[ADJ_FAKE, verify("fake", "refuted")]))
  r = expert(server, max_rounds=1).report("x.png", picture())
  assert (r.meta["stop"], len(r.meta["rounds"])) == ("max rounds", 2)


def test_retries_cache_and_a_rerun_that_sends_nothing(loopback, tmp_path):
  server = loopback(Script(p1=[(429, ""), PROPOSE_FAKE], p2=[(500, ""), PROPOSE_REAL],
                           adj=[ADJ_FAKE, verify("fake", "confirmed")]))
  first = expert(server, tmp_path).report("x.png", picture())
  sent = len(server.calls)
  assert sent == 6 and first.meta["stop"] == "confirmed"
  again = expert(server, tmp_path)
  assert again.report("x.png", picture()).to_json() == first.to_json()
  assert len(server.calls) == sent
  assert sum(u["cache_hits"] for u in again.usage().values()) == 4


def test_out_of_format_is_asked_again_once_then_abstains(loopback):
  server = loopback(Script(p1=["I think it is fake.", PROPOSE_FAKE], p2=[PROPOSE_REAL],
                           adj=["Decision: fake Reasoning: x", "Decision: fake Reasoning: x"]))
  r = expert(server).report("x.png", picture())
  assert r.label == "abstain" and "a 'fake' decision without a Bounding Box" in r.meta["reason"]
  again = [b for _, _, b in server.calls if b["model"] == "p1"][1]
  assert again["messages"][1] == {"role": "assistant", "content": "I think it is fake."}
  assert "not in the format asked for" in again["messages"][2]["content"]


# -- face, command and precomputed experts ------------------------------------


@pytest.mark.slow
def test_face_expert_on_faces_and_on_a_picture_without_one(workdir, tmp_path):
  from fifa_jax import api
  from data_prep import samples
  photo = np.full((300, 400, 3), 120, np.uint8)
  photo[80:192, 200:312] = cv2.imread(str(samples.tom_hanks_path()))
  cv2.imwrite(str(tmp_path / "face.png"), photo)
  cv2.imwrite(str(tmp_path / "noise.png"), picture(2))
  model = api.FiFa.load(workdir[0], max_new_tokens=24)
  try:
    face, noise = experts.FaceExpert(model).report_many(
        [("face.png", str(tmp_path / "face.png")), ("noise.png", str(tmp_path / "noise.png"))])
    direct = model.ask(photo[..., ::-1], task="det", faces="largest")
  finally:
    model.close()
  assert face.label in ("real", "fake") and face.p_fake == pytest.approx(direct.det_probs["fake"], abs=1e-6)
  assert face.label == ("fake" if face.p_fake > 0.5 else "real")
  (only,) = face.meta["faces"]
  x0, y0, side = only["face"]["crop"]
  assert 200 < x0 + side / 2 < 312 and 80 < y0 + side / 2 < 192
  for m, b in zip(face.masks, face.boxes):
    mask = reports_lib.mask_from_json(m)
    assert mask.shape == (300, 400) and not mask[:, :x0].any() and b == reports_lib.mask_box(mask)
  assert noise.label == "abstain" and "no face" in noise.meta["reason"]


STAND_IN = textwrap.dedent("""
    import argparse, json
    p = argparse.ArgumentParser(); p.add_argument("--manifest"); p.add_argument("--out")
    a = p.parse_args()
    rows = [json.loads(l) for l in open(a.manifest)]
    if any("crash" in r["image"] for r in rows):
        raise SystemExit("out of GPU memory")
    with open(a.out, "w") as f:
        for r in rows:
            if "skip" not in r["image"]:
                f.write(json.dumps({"image": r["image"], "expert": "fakeshield", "label": "fake",
                                    "p_fake": 0.8, "boxes": [[1, 2, 3, 4]], "meta": {"path": r["path"]}}) + "\\n")
""")


def test_command_expert_runs_a_program_and_abstains_for_what_it_misses(tmp_path):
  script = tmp_path / "driver.py"
  script.write_text(STAND_IN)
  e = experts.CommandExpert("edit", [sys.executable, str(script)])
  a, b = e.report_many([("a.png", "a.png"), ("skip.png", "skip.png")])
  assert (a.expert, a.label, a.p_fake, a.boxes) == ("edit", "fake", 0.8, [[1, 2, 3, 4]])
  assert a.meta["path"] == str(Path("a.png").resolve())
  assert b.label == "abstain" and "no report for this image" in b.meta["reason"]
  crashed = e.report_many([("crash.png", "crash.png")])[0]
  assert crashed.label == "abstain" and "exited 1: out of GPU memory" in crashed.meta["reason"]


def test_precomputed_expert_reads_reports_by_image(tmp_path):
  path = tmp_path / "ps.jsonl"
  write_reports(path, [Report("dir/a.png", "ps", "real", 0.1), Report("b.png", "other", "fake")])
  a, b = experts.PrecomputedExpert("ps", str(path)).report_many([("a.png", "a.png"), ("b.png", "b.png")])
  assert (a.label, a.p_fake) == ("real", 0.1)
  assert b.label == "abstain" and b.meta["reason"] == "no precomputed report"


# -- collection, evaluation and the commands ----------------------------------


class Fixed:
  """An expert that says what it is told, counting the images it is asked about."""

  def __init__(self, name, said):
    self.name, self.said, self.asked = name, said, []

  def report_many(self, items):
    self.asked += [i for i, _ in items]
    return [Report(i, self.name, self.said[i][0], self.said[i][1]) if i in self.said
            else abstain(i, self.name, "not covered") for i, _ in items]


def test_collect_resumes_and_drops_a_cut_line(tmp_path):
  rows = [{"image": f"{k}.png", "path": f"{k}.png"} for k in range(5)]
  face = Fixed("face", {f"{k}.png": ("fake", 0.9) for k in range(5)})
  out = tmp_path / "reports.jsonl"
  assert run.collect([face], rows[:3], out, chunk=2, progress=False)["written"] == 3
  with out.open("a") as f:
    f.write('{"image": "3.png", "expert": "fa')  # an interrupted write
  sem = Fixed("semantic", {"0.png": ("real", None)})
  counts = run.collect([face, sem], rows, out, chunk=2, progress=False)
  assert counts == {"written": 7, "skipped": 3, "abstained": 4}
  assert face.asked == ["0.png", "1.png", "2.png", "3.png", "4.png"]
  found = list(read_reports(out))
  assert len(found) == 10 and len({(r.image, r.expert) for r in found}) == 10


def test_eval_table_per_domain_expert_and_aggregator():
  manifest = [{"image": "f1", "label": "fake", "domain": "face"}, {"image": "f2", "label": "fake", "domain": "face"},
              {"image": "r1", "label": "real", "domain": "face"}, {"image": "s1", "label": "fake", "domain": "semantic"}]
  reports = [Report("f1", "face", "fake", 0.9), Report("f2", "face", "real", 0.4), Report("r1", "face", "real", 0.2),
             abstain("s1", "face", "no face"),
             Report("f1", "semantic", "fake"), Report("f2", "semantic", "fake"), Report("r1", "semantic", "fake"),
             Report("s1", "semantic", "fake")]
  result = evaluate.evaluate(manifest, reports, ["vote", "confidence"], {"face": 0.9, "semantic": 0.6})
  face = result["experts"]["face"]["all"]
  # tp 1, fn 1, tn 1, one fake abstained: Acc 2/4, Precision 1/1, Recall 1/3
  assert (face["n"], face["acc"], face["precision"], face["abstain"]) == (4, 50.0, 100.0, 1)
  assert face["recall"] == pytest.approx(100 / 3) and face["f1"] == pytest.approx(50.0)
  assert result["experts"]["semantic"]["semantic"]["acc"] == 100.0
  # vote: f2 and r1 tie 1-1 and go to the mean p_fake... semantic gives none, so the rule: fake
  vote = result["aggregators"]["vote"]["all"]
  assert (vote["acc"], vote["precision"]) == (75.0, 75.0)
  # confidence: the face expert (0.9) outweighs the semantic one (0.6) on r1 and f2
  assert result["verdicts"]["r1"]["confidence"]["label"] == "real"
  assert result["verdicts"]["f2"]["confidence"]["label"] == "real"
  assert "| aggregator vote | all | 4 | 75.0 |" in evaluate.markdown(result)


def test_agent_commands_end_to_end_offline(loopback, tmp_path):
  server = loopback(Script(p1=[PROPOSE_FAKE] * 2, p2=[PROPOSE_REAL] * 2,
                           adj=[ADJ_FAKE, verify("fake", "confirmed"), ADJ_REAL]))
  for k in range(2):
    cv2.imwrite(str(tmp_path / f"{k}.png"), picture(k))
  (tmp_path / "manifest.jsonl").write_text(
      '{"image": "0.png", "label": "fake", "domain": "semantic"}\n{"image": "1.png", "label": "real", "domain": "semantic"}\n')
  write_reports(tmp_path / "ps.jsonl", [Report("0.png", "ps", "fake", 0.7), Report("1.png", "ps", "real", 0.3)])
  (tmp_path / "agent.yaml").write_text(textwrap.dedent(f"""
      experts:
        semantic:
          kind: semantic
          proposers: [{{base_url: {server.url}, model: p1}}, {{base_url: {server.url}, model: p2}}]
          adjudicator: {{base_url: {server.url}, model: adj}}
        ps: {{kind: precomputed, reports: ps.jsonl}}
      accuracy: {{semantic: 0.7, ps: 0.8}}
      cache_dir: {tmp_path / "cache"}
  """))
  cli = CliRunner()
  r = cli.invoke(app, ["agent", "reports", "--manifest", str(tmp_path / "manifest.jsonl"), "--config",
                       str(tmp_path / "agent.yaml"), "--out", str(tmp_path / "reports.jsonl"), "--no-progress"])
  assert r.exit_code == 0, r.output
  assert "4 reports written (0 abstentions), 0 already in" in r.output
  assert "semantic adjudicator: 3 requests, 0 from cache, 0 retries, 0 failed" in r.output
  r = cli.invoke(app, ["agent", "eval", "--manifest", str(tmp_path / "manifest.jsonl"), "--reports",
                       str(tmp_path / "reports.jsonl"), "--out", str(tmp_path / "eval"),
                       "--config", str(tmp_path / "agent.yaml")])
  assert r.exit_code == 0, r.output
  assert "| expert semantic | all | 2 | 100.0 |" in r.output and "| aggregator confidence | all | 2 | 100.0 |" in r.output
  assert json.loads((tmp_path / "eval" / "report.json").read_text())["aggregators"]["vote"]["all"]["acc"] == 100.0
  r = cli.invoke(app, ["agent", "run", "--image", str(tmp_path / "0.png"), "--config", str(tmp_path / "agent.yaml"),
                       "--out", str(tmp_path / "run")])
  assert r.exit_code == 0, r.output  # answered from the cache
  assert "round 1: fake, confirmed" in r.output and "verdict by vote: fake" in r.output
  assert (tmp_path / "run" / "evidence.png").stat().st_size > 0
  assert len(server.calls) == 7  # 4 for the fake, 3 for the real; `agent run` sent none


@pytest.mark.parametrize("files, args, message", [
    ({"agent.yaml": "experts:\n  face: {kind: fase, checkpoint: x}\n"}, ["reports"],
     "experts.face.kind: 'fase' is not one of face, semantic, scripted-semantic, command, precomputed (did you mean 'face'?)"),
    ({"agent.yaml": "experts:\n  x: {kind: semantic}\n"}, ["reports"], "experts.x.proposers: a semantic expert needs it"),
    ({"agent.yaml": "expert: {}\n"}, ["reports"], "expert"),
    ({"manifest.jsonl": '{"image": "a.png"}\n{"image": "a.png"}\n'}, ["reports"], "manifest.jsonl:2: image 'a.png' is listed twice"),
    ({"manifest.jsonl": '{"image": "a.png", "label": "maybe"}\n'}, ["eval"], "manifest.jsonl:1: label 'maybe' is not real or fake"),
    ({}, ["eval", "--aggregator", "median"], "--aggregator 'median' is not one of vote, confidence, llm"),
])
def test_agent_commands_reject_bad_input_in_one_line(tmp_path, files, args, message):
  (tmp_path / "agent.yaml").write_text(f"experts:\n  ps: {{kind: precomputed, reports: {tmp_path / 'r.jsonl'}}}\n")
  (tmp_path / "manifest.jsonl").write_text('{"image": "a.png", "label": "fake"}\n')
  write_reports(tmp_path / "r.jsonl", [Report("a.png", "ps", "fake")])
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  command, *rest = args
  common = ["--manifest", str(tmp_path / "manifest.jsonl")]
  if command == "reports":
    common += ["--config", str(tmp_path / "agent.yaml"), "--out", str(tmp_path / "out.jsonl")]
  else:
    common += ["--reports", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "eval")]
  r = CliRunner().invoke(app, ["agent", command, *common, *rest])
  assert r.exit_code == 2, r.output
  lines = r.output.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"fifa agent {command}: error: ") and message in lines[0]


# -- the prompted aggregator --------------------------------------------------


def test_prompted_aggregator_fills_the_supplements_slots(loopback):
  from fifa_jax.agent import prompted
  server = loopback(Script(agg=["Final Decision: fake\nIntegrated Reasoning: The face expert's mask is specific.",
                                "no idea", "still no idea"]))
  role = semantic.Role(base_url=server.url, model="agg")
  llm = prompted.PromptedAggregator(role, {"face": "fifa", "semantic": "sem", "ps": "edit"})
  reports = [Report("x", "fifa", "fake", 0.912, "The nose is smeared."), abstain("x", "edit", "no edit found"),
             Report("x", "sem", "real", None, "Physics holds.")]
  v = llm(reports)
  assert (v.label, v.method, v.detail["reasoning"]) == ("fake", "llm", "The face expert's mask is specific.")
  body = server.calls[0][2]
  assert body["messages"] == [{"role": "user", "content": prompts.aggregator(
      ps="abstained: no edit found", face="fake (p_fake 0.91): The nose is smeared.", semantic="real: Physics holds.")}]
  assert (body["temperature"], body["max_tokens"]) == (0.1, 512)
  again = llm(reports[:1])  # a new prompt; twice out of format: the verdict abstains
  assert again.label == "abstain" and "after asking again" in again.detail["reason"]
  assert "[Semantic Expert]: no report" in server.calls[1][2]["messages"][0]["content"]
  r = evaluate.evaluate([{"image": "x", "label": "fake"}], reports[:1], ["vote"])  # llm not asked for: fine
  assert r["aggregators"]["vote"]["all"]["acc"] == 100.0
  with pytest.raises(ValueError, match="--aggregator llm needs an `aggregator:` endpoint"):
    evaluate.evaluate([{"image": "x", "label": "fake"}], reports, ["llm"])


def test_scripted_stand_in_answers_from_the_known_masks(tmp_path):
  from fifa_jax.agent import scripted
  mask = np.zeros((H, W), np.uint8)
  mask[30:50, 60:100] = 255
  cv2.imwrite(str(tmp_path / "fake.png"), picture(3))
  cv2.imwrite(str(tmp_path / "real.png"), picture(4))
  cv2.imwrite(str(tmp_path / "mask.png"), mask)
  (tmp_path / "truth.jsonl").write_text(
      '{"image": "fake.png", "label": "fake", "mask": "mask.png"}\n{"image": "real.png", "label": "real"}\n')
  server = scripted.ScriptedEndpoint(str(tmp_path / "truth.jsonl"))
  try:
    roles = [semantic.Role(base_url=server.url, model=m) for m in ("proposer-1", "proposer-2", "adjudicator")]
    e = semantic.SemanticExpert(semantic.SemanticConfig(tuple(roles[:2]), roles[2]), "semantic-scripted")
    fake = e.report("fake.png", cv2.cvtColor(cv2.imread(str(tmp_path / "fake.png")), cv2.COLOR_BGR2RGB))
    real = e.report("real.png", cv2.cvtColor(cv2.imread(str(tmp_path / "real.png")), cv2.COLOR_BGR2RGB))
  finally:
    server.close()
  assert (fake.label, fake.boxes, fake.meta["stop"]) == ("fake", [[60, 30, 100, 50]], "confirmed")
  assert [p["decision"] for p in fake.meta["proposals"]] == ["fake", "fake"]
  assert (real.label, real.boxes, real.meta["stop"]) == ("real", [], "real verdict")
  assert [p["decision"] for p in real.meta["proposals"]] == ["real", "fake"]
