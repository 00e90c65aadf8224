"""Imports run one way: from the CLI down to the models and the concept tree.

Every `import` in fifa_jax and data_prep (module-level and function-local alike) is
read from the source; a part may import only parts of a lower rank, and no set of
modules imports itself round.  The ranks are the README's Layout.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The parts of fifa_jax, lowest first: a part imports only lower ranks (never its peers).
RANK = {"fict": 0, "mesh": 0, "schema": 0, "prep_env": 0, "endpoint": 0, "paths": 0, "tokens": 1, "models": 2, "data": 2, "checkpoint": 3, "config": 4,
        "convert": 5, "train": 5, "infer": 5, "eval": 6, "api": 6, "serve": 7, "agent": 7, "cli": 8}
# data_prep (the annotator, its own environment) shares only the vocabulary and the record contract.
DATA_PREP_MAY_USE = {"fict", "tokens", "endpoint", "fifa_jax.data.records"}


def modules(package: str) -> dict[str, Path]:
  out = {}
  for path in sorted((REPO / package).rglob("*.py")):
    parts = path.relative_to(REPO).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def imports(path: Path) -> set[str]:
  """The fifa_jax / data_prep modules `path` imports (`from a import b` counts a.b when a.b is a module)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found.add(node.module)
      found |= {f"{node.module}.{a.name}" for a in node.names}
  return {m for m in found if m.split(".")[0] in ("fifa_jax", "data_prep")}


def part(module: str) -> str | None:
  bits = module.split(".")
  if bits[0] != "fifa_jax" or len(bits) == 1:
    return None
  return bits[1]


ALL = {**modules("fifa_jax"), **modules("data_prep")}
# Edges to real modules; a package's __init__ (what `from fifa_jax import fict` also names) is empty.
GRAPH = {m: {i for i in imports(p) if i in ALL and ALL[i].name != "__init__.py"} for m, p in ALL.items()}


def test_every_part_is_ranked():
  parts = {part(m) for m in ALL if part(m)}
  assert parts <= RANK.keys(), f"unranked parts of fifa_jax: {parts - RANK.keys()}"


def test_imports_run_downward():
  upward = []
  for m, deps in GRAPH.items():
    for d in deps:
      a, b = part(m), part(d)
      if m.startswith("data_prep"):
        if d.startswith("fifa_jax") and b not in DATA_PREP_MAY_USE and d not in DATA_PREP_MAY_USE:
          upward.append(f"{m} -> {d} (data_prep uses only {sorted(DATA_PREP_MAY_USE)})")
      elif d.startswith("data_prep"):
        if a != "cli":  # `fifa data build` dispatches to the writing side; nothing else may
          upward.append(f"{m} -> {d} (fifa_jax does not import data_prep)")
      elif a and b and a != b and RANK[b] >= RANK[a]:
        upward.append(f"{m} -> {d} ({a} rank {RANK[a]} imports {b} rank {RANK[b]})")
  assert not upward, "imports against the layering:\n  " + "\n  ".join(sorted(upward))


def test_no_import_cycle():
  state: dict[str, int] = {}  # 1: on the path, 2: done
  cycles = []

  def visit(m, path):
    state[m] = 1
    for d in sorted(GRAPH[m]):
      if state.get(d) == 1:
        cycles.append(" -> ".join(path[path.index(d):] + [d]))
      elif d not in state:
        visit(d, path + [d])
    state[m] = 2

  for m in sorted(GRAPH):
    if m not in state:
      visit(m, [m])
  assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
  # The check above cannot pass vacuously: it reads function-local imports too.
  src = tmp_path / "m.py"
  src.write_text("def f():\n  from fifa_jax.train import loop\n")
  assert "fifa_jax.train.loop" in imports(src)
  assert GRAPH["fifa_jax.cli"] and GRAPH["fifa_jax.models.fifa"]


def local_imports_without_reason() -> list[str]:
  """Function-local imports with no comment on their line or above their block."""
  missing = []
  for name, path in ALL.items():
    lines = path.read_text().splitlines()
    for fn in ast.walk(ast.parse("\n".join(lines))):
      if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(fn):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
          continue
        i = node.lineno - 1
        while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")) and "#" not in lines[i]:
          i -= 1  # up to the first import of the block
        if "#" not in lines[node.lineno - 1] and "#" not in lines[i] and not lines[i - 1].strip().startswith("#"):
          missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
  return missing


def test_function_local_imports_say_why():
  # An import inside a function hides an edge; each one says why it is there (a slow or
  # optional dependency kept off `fifa --help` and off workers that never use it).
  missing = local_imports_without_reason()
  assert not missing, f"{len(missing)} function-local imports without a reason: {missing[:20]}"
