"""The Facial Image Concept Tree (FICT), Tables 9-12 of the FiFa paper, as data.

184 concepts over 8 levels: 112 Atomic Concepts (leaves) and 72 Parent Concepts.
"left" and "right" are the subject's own (MediaPipe's convention): the subject's
left eye appears on the image's right side.

A Parent Concept's Region Mask is the union of its atomic descendants' masks, so
only the 112 atomic masks are ever stored (see fifa_jax.data.records).

This module is pure Python (no jax) so that data_prep can import it from its own
environment.  `python -m fifa_jax.fict --dump` prints the tree, two spaces of
indent per level.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import sys

# One concept a line; two spaces of indent per level; the root is level 1.
_TREE = """\
whole facial image
  foreground
    region around head
      region around hair
        hair
          hair near face
            hair near left part of face
              hair near left part of forehead
              hair near left temple
              hair near left ear
              hair near left cheek
              hair near left part of jaws
            hair near right part of face
              hair near right part of forehead
              hair near right temple
              hair near right ear
              hair near right cheek
              hair near right part of jaws
          outer hair
            left part of outer hair
            right part of outer hair
        edges of hair
          inner edge of hair
          outer edge of hair
      region around face
        region around forehead
          forehead
            left part of forehead
              upper left part of forehead
              lower left part of forehead
            right part of forehead
              upper right part of forehead
              lower right part of forehead
          edges of forehead
            top edge of forehead
            bottom edge of forehead
          temples
            left temple
            right temple
          edges of temples
            edges of left temple
            edges of right temple
        region around eyebrows
          eyebrows
            left eyebrow
              headstart of left eyebrow
              tail of left eyebrow
              middle part of left eyebrow
            right eyebrow
              headstart of right eyebrow
              tail of right eyebrow
              middle part of right eyebrow
          edges of eyebrows
            edges of left eyebrow
              top edge of left eyebrow
              bottom edge of left eyebrow
            edges of right eyebrow
              top edge of right eyebrow
              bottom edge of right eyebrow
          region between eyebrows
        region around eyes
          eyes
            left eye
              iris of left eye
              sclera of left eye
            right eye
              iris of right eye
              sclera of right eye
          edges of eyes
            edges of left eye
              top edge of left eye
              bottom edge of left eye
            edges of right eye
              top edge of right eye
              bottom edge of right eye
          region between eyes
          eyelids
            eyelids of left eye
              upper eyelid of left eye
              lower eyelid of left eye
            eyelids of right eye
              upper eyelid of right eye
              lower eyelid of right eye
          eye bags
            eye bag of left eye
            eye bag of right eye
          eye sockets
            eye sockets of left eye
              upper eye socket of left eye
              lower eye socket of left eye
            eye sockets of right eye
              upper eye socket of right eye
              lower eye socket of right eye
        region around ears
          ears
            left ear
              upper part of left ear
              lower part of left ear
            right ear
              upper part of right ear
              lower part of right ear
          edges of ears
            edges of left ear
            edges of right ear
        region around nose
          nose
            nasion
            nose bridge
            nasal ala
              nasal ala of left side
              nasal ala of right side
            nose base
          edges of nose
        region around cheeks
          cheeks
            left cheek
              upper part of left cheek
              lower part of left cheek
            right cheek
              upper part of right cheek
              lower part of right cheek
          edges of cheeks
            edges of left cheek
            edges of right cheek
        region around mouth
          mouth
            lips
              upper lip
              lower lip
            oral cavity
          edges of mouth
            top edge of mouth
            bottom edge of mouth
        region around jaws
          jaws
            upper jaw
              left part of upper jaw
              right part of upper jaw
            lower jaw
              left part of lower jaw
              right part of lower jaw
          edges of jaws
            top edge of jaws
            bottom edge of jaws
          chin
            left part of chin
            right part of chin
          edges of chin
          philtrum
        nasolabial folds
          nasolabial fold of left side
          nasolabial fold of right side
        face edge
          left part of face edge
            face edge near left part of forehead
            face edge near left temple
            face edge near left ear
            face edge near left cheek
            face edge near left part of jaws
          right part of face edge
            face edge near right part of forehead
            face edge near right temple
            face edge near right ear
            face edge near right cheek
            face edge near right part of jaws
    region around neck
      neck
      edges of neck
    region around adornment and clothing
      region around adornments
        hat
        edges of hat
        eyeglasses
        edges of eyeglasses
        earrings
          left earring
          right earring
        edges of earrings
      region around clothing
        clothing
        edges of clothing
  background
    left part of background
    right part of background
"""

NUM_ATOMIC = 112
NUM_PARENT = 72
NUM_LEVELS = 8

ROOT = "whole facial image"
# Section 3.2, Step 2: always artifact-existing, whatever the coverage.
DEFAULT_ARTIFACT_PARENTS = (
    "whole facial image",
    "foreground",
    "region around head",
    "region around face",
)


@dataclasses.dataclass(frozen=True)
class Concept:
  name: str
  level: int  # 1 for the root
  parent: str | None
  children: tuple[str, ...]
  index: int  # position in tree (pre-)order, 0..183

  @property
  def is_atomic(self) -> bool:
    return not self.children


def _parse(text: str) -> dict[str, Concept]:
  rows = []  # (name, level, parent)
  stack: list[str] = []
  for lineno, line in enumerate(text.splitlines(), 1):
    stripped = line.lstrip(" ")
    indent = len(line) - len(stripped)
    if not stripped or indent % 2:
      raise ValueError(f"FICT line {lineno}: bad indent in {line!r}")
    level = indent // 2 + 1
    if level > len(stack) + 1:
      raise ValueError(f"FICT line {lineno}: {stripped!r} skips a level")
    del stack[level - 1:]
    rows.append((stripped, level, stack[-1] if stack else None))
    stack.append(stripped)
  children: dict[str, list[str]] = {name: [] for name, _, _ in rows}
  for name, _, parent in rows:
    if parent is not None:
      children[parent].append(name)
  if len(children) != len(rows):
    raise ValueError("FICT has duplicate concept names")
  return {
      name: Concept(name, level, parent, tuple(children[name]), i)
      for i, (name, level, parent) in enumerate(rows)
  }


CONCEPTS: dict[str, Concept] = _parse(_TREE)
NAMES: tuple[str, ...] = tuple(CONCEPTS)
ATOMIC: tuple[str, ...] = tuple(n for n, c in CONCEPTS.items() if c.is_atomic)
PARENTS: tuple[str, ...] = tuple(n for n, c in CONCEPTS.items() if not c.is_atomic)
_ATOMIC_INDEX = {name: i for i, name in enumerate(ATOMIC)}


def get(name: str) -> Concept:
  """The concept called `name`; a KeyError that suggests near names otherwise."""
  try:
    return CONCEPTS[name]
  except KeyError:
    near = suggest(name)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise KeyError(f"{name!r} is not a FICT concept{hint}") from None


def suggest(name: str, n: int = 3) -> list[str]:
  """Up to `n` FICT names closest to `name` (for error messages and the CLI)."""
  return difflib.get_close_matches(name.strip().lower(), NAMES, n=n, cutoff=0.5)


def parent(name: str) -> str | None:
  return get(name).parent


def children(name: str) -> tuple[str, ...]:
  return get(name).children


def level(name: str) -> int:
  return get(name).level


def is_atomic(name: str) -> bool:
  return get(name).is_atomic


def ancestors(name: str) -> tuple[str, ...]:
  """Parents of `name` from its direct parent up to the root."""
  out = []
  p = get(name).parent
  while p is not None:
    out.append(p)
    p = CONCEPTS[p].parent
  return tuple(out)


@functools.cache
def atomic_descendants(name: str) -> tuple[str, ...]:
  """Atomic Concepts under `name` in tree order; an atomic concept is its own."""
  c = get(name)
  if c.is_atomic:
    return (name,)
  return tuple(a for child in c.children for a in atomic_descendants(child))


def atomic_index(name: str) -> int:
  """Position of an Atomic Concept among the 112 (the mask-store channel)."""
  try:
    return _ATOMIC_INDEX[name]
  except KeyError:
    get(name)  # raises with suggestions when unknown
    raise KeyError(f"{name!r} is a Parent Concept, not an Atomic one") from None


def at_level(lvl: int) -> tuple[str, ...]:
  return tuple(n for n, c in CONCEPTS.items() if c.level == lvl)


def mirror(name: str) -> str:
  """The concept on the other side of the face ("left" <-> "right").

  Concepts without a side (or whose mirror is themselves) map to themselves.
  """
  get(name)
  words = name.split(" ")
  swapped = " ".join({"left": "right", "right": "left"}.get(w, w) for w in words)
  return swapped if swapped in CONCEPTS else name


def dump() -> str:
  """The tree in the format of the reference file (comment lines excluded)."""
  return "".join("  " * (c.level - 1) + n + "\n" for n, c in CONCEPTS.items())


def _check() -> None:
  assert len(ATOMIC) == NUM_ATOMIC, len(ATOMIC)
  assert len(PARENTS) == NUM_PARENT, len(PARENTS)
  assert max(c.level for c in CONCEPTS.values()) == NUM_LEVELS
  assert all(p in CONCEPTS for p in DEFAULT_ARTIFACT_PARENTS)


_check()


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m fifa_jax.fict", description=__doc__.split("\n")[0])
  ap.add_argument("--dump", action="store_true", help="print the whole tree, indented")
  ap.add_argument("--concept", help="show one concept: level, parent, children, atomic descendants")
  args = ap.parse_args(argv)
  if args.concept:
    try:
      c = get(args.concept)
    except KeyError as e:
      print(e.args[0], file=sys.stderr)
      return 2
    kind = "atomic" if c.is_atomic else "parent"
    print(f"{c.name}  ({kind}, level {c.level})")
    print(f"  parent:   {c.parent}")
    print(f"  children: {', '.join(c.children) or '-'}")
    print(f"  atomic descendants ({len(atomic_descendants(c.name))}): {', '.join(atomic_descendants(c.name))}")
    return 0
  if args.dump:
    sys.stdout.write(dump())
    return 0
  print(f"FICT: {len(NAMES)} concepts, {len(ATOMIC)} atomic, {len(PARENTS)} parent, {NUM_LEVELS} levels")
  return 0


if __name__ == "__main__":
  sys.exit(main())
