"""The learned aggregator on held-out toy records: greedy answers of a trained policy
against majority vote, on records it never trained on.

  .venv/bin/python bench/agent_toy_eval.py RUN/policy [--records 256] [--seed 7]

RUN is a `fifa agent train --config configs/agent/grpo_toy.yaml` workdir.  Prints the
mean of each reward over the greedy answers, and the accuracy of a majority vote over
the three experts' verdicts on the same records (the baseline a learned aggregator
should beat: the domain's expert is always right, the other two guess).
"""

from __future__ import annotations

import argparse

import numpy as np

from fifa_jax.agent import learned, rewards, toy
from fifa_jax.models import generate as gen


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("policy")
  ap.add_argument("--records", type=int, default=256)
  ap.add_argument("--seed", type=int, default=7)
  a = ap.parse_args()
  cfg, model, tok = learned.load_policy(a.policy)
  recs = toy.records(a.records, seed=a.seed)
  prompts = [learned.chat_prompt(r["prompt"]) for r in recs]
  ids, att, _ = learned.encode_prompts(tok, prompts, 80)
  gc = gen.GenerationConfig(max_new_tokens=48, eos_token_ids=(tok.eos_token_id,),
                            pad_token_id=learned.pad_id(tok))
  completions = []
  for i in range(0, len(recs), 64):
    out = gen.generate(model, ids[i:i + 64], attention_mask=att[i:i + 64], config=gc)
    completions += [tok.decode(np.asarray(t[:n]), skip_special_tokens=True)
                    for t, n in zip(np.asarray(out.tokens), np.asarray(out.lengths))]
  cols = {"label": [r["label"] for r in recs], "method": [r["method"] for r in recs]}
  for name, fn in rewards.REWARDS.items():
    print(f"{name:18s} {np.mean(fn(prompts, completions, **cols)):.3f}")
  votes, agree, cited = [], [], []
  for r, c in zip(recs, completions):
    said = [line.split(": ", 1)[1].split()[0] for line in r["prompt"].splitlines()[2:5]]
    majority = max(("fake", "real"), key=said.count)
    votes.append(majority == r["label"])
    answer = c.split("<answer>")[-1].split("</answer>")[0].strip() if "<answer>" in c else None
    method = c.split("<method>")[-1].split("</method>")[0].split()[-1] if "<method>" in c else None
    agree.append(answer == majority)
    cited.append(method is not None and method.isdigit() and 1 <= int(method) <= 3
                 and answer == said[int(method) - 1])
  print(f"majority vote accuracy {np.mean(votes):.3f} on the same {len(recs)} records")
  print(f"the policy's answer equals the majority's on {np.mean(agree):.3f}, "
        f"the cited expert's verdict on {np.mean(cited):.3f}")


if __name__ == "__main__":
  main()
