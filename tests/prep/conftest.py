"""Fixtures for the data_prep tests (run in .venv-prep; no jax)."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def annotator():
  import cv2
  cv2.setNumThreads(1)
  from data_prep.pipeline import Annotator
  a = Annotator()
  yield a
  a.close()


@pytest.fixture(scope="session")
def astronaut():
  from data_prep import samples
  return samples.astronaut()


@pytest.fixture(scope="session")
def tom():
  from data_prep import samples
  return samples.tom_hanks()


def _run(annotator, rgb):
  face, labels, allm = annotator.regions(rgb)
  return face, labels, allm.copy()


@pytest.fixture(scope="session")
def astro_regions(annotator, astronaut):
  return _run(annotator, astronaut)


@pytest.fixture(scope="session")
def tom_regions(annotator, tom):
  return _run(annotator, tom)


@pytest.fixture(scope="session")
def flipped_regions(annotator, astronaut, tom):
  return {"astronaut": _run(annotator, np.ascontiguousarray(astronaut[:, ::-1])),
          "tom": _run(annotator, np.ascontiguousarray(tom[:, ::-1]))}
