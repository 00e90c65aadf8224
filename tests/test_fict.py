"""The FICT: counts, lookups, and the dump format of the reference tree."""

import subprocess
import sys
from pathlib import Path

import pytest

from fifa_jax import fict

REFERENCE = Path(__file__).parent / "data" / "fict_tree.txt"  # copy of shared/reference
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "fict_tree.txt"


def _without_comments(path: Path) -> str:
  return "".join(l for l in path.read_text().splitlines(keepends=True) if not l.startswith("#"))


def test_counts():
  assert len(fict.NAMES) == 184
  assert len(fict.ATOMIC) == 112 and len(fict.PARENTS) == 72
  assert max(fict.level(n) for n in fict.NAMES) == 8
  assert fict.at_level(1) == (fict.ROOT,)
  assert sum(len(fict.at_level(l)) for l in range(1, 9)) == 184


def test_dump_cli_equals_reference_without_comments():
  out = subprocess.run([sys.executable, "-m", "fifa_jax.fict", "--dump"], capture_output=True,
                       text=True, check=True).stdout
  assert out == _without_comments(REFERENCE)
  if SHARED.is_file():  # the committed copy must track the shared reference
    assert REFERENCE.read_text() == SHARED.read_text()


def test_lookups():
  assert fict.parent("middle part of left eyebrow") == "left eyebrow"
  assert fict.children("left eyebrow") == (
      "headstart of left eyebrow", "tail of left eyebrow", "middle part of left eyebrow")
  assert fict.level("whole facial image") == 1 and fict.level("hair near left temple") == 8
  assert fict.ancestors("nasion") == ("nose", "region around nose", "region around face",
                                      "region around head", "foreground", "whole facial image")
  assert fict.atomic_descendants(fict.ROOT) == fict.ATOMIC
  assert fict.atomic_descendants("nasion") == ("nasion",)
  assert fict.is_atomic("nasion") and not fict.is_atomic("nose")
  assert [fict.atomic_index(a) for a in fict.ATOMIC] == list(range(112))
  assert set(fict.DEFAULT_ARTIFACT_PARENTS) <= set(fict.PARENTS)


def test_parents_are_unions_of_their_childrens_atomics():
  for p in fict.PARENTS:
    from_children = [a for c in fict.children(p) for a in fict.atomic_descendants(c)]
    assert tuple(from_children) == fict.atomic_descendants(p)
    assert len(set(from_children)) == len(from_children)


def test_mirror_pairs_left_and_right():
  pairs = {n: fict.mirror(n) for n in fict.NAMES if fict.mirror(n) != n}
  assert pairs["left eyebrow"] == "right eyebrow"
  assert pairs["face edge near right cheek"] == "face edge near left cheek"
  assert all(pairs[v] == k for k, v in pairs.items())
  # Sided concepts all have a mirror; mirrored concepts sit at the same level.
  for n in fict.NAMES:
    if " left " in f" {n} " or " right " in f" {n} ":
      assert n in pairs, n
  assert all(fict.level(k) == fict.level(v) for k, v in pairs.items())
  assert fict.mirror("nasion") == "nasion"


def test_unknown_names_get_suggestions():
  with pytest.raises(KeyError, match="did you mean 'left eyebrow'"):
    fict.get("left eybrow")
  with pytest.raises(KeyError, match="Parent Concept"):
    fict.atomic_index("eyes")
  r = subprocess.run([sys.executable, "-m", "fifa_jax.fict", "--concept", "nose brige"],
                     capture_output=True, text=True)
  assert r.returncode == 2 and "nose bridge" in r.stderr
