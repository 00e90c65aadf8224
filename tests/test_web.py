"""The web page of `fifa serve`, in a real headless Chromium (Debian's, driven by
playwright): load the page, upload the astronaut, choose B-AGE, draw a box with the
mouse, ask, and find the answer's phrases coloured like the masks drawn on the image.

The server runs a scripted model here: the page is under test, not the model, whose
HTTP answers test_serve.py checks.  The scripted answer grounds two phrases, one mask
exactly the box the page sent and one fixed square, so that what the page draws can be
checked pixel by pixel.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fifa_jax import api, prep_env, serve as serve_lib, tokens
from fifa_jax.infer import overlay

DOCS = Path(__file__).resolve().parents[1] / "docs"


class ScriptedModel:
  """What the server needs of api.FiFa, answering from a script."""

  def __init__(self):
    self.config = SimpleNamespace(image_size=128)
    self.loaded = SimpleNamespace(source="scripted (tests/test_web.py)")
    self.max_new_tokens = 16
    self.asked: list = []

  def answer(self, parsed, max_new_tokens=None):
    out = []
    for q, free in parsed:
      self.asked.append(q)
      h, w = q.rgb.shape[:2]
      boxed = np.zeros((h, w), bool)
      x1, y1, x2, y2 = (int(round(v)) for v in q.box)
      boxed[y1:y2, x1:x2] = True
      square = np.zeros((h, w), bool)
      square[10:60, 10:60] = True
      grounded = [api.Grounded("edges of right eye", "edges of right eye", boxed, boxed, 0.9),
                  api.Grounded("nose", "nose", square, square, 0.8)]
      text = ("The manipulated areas are <p>edges of right eye</p>[SEG], where the colour shifts, "
              "and <p>nose</p>[SEG].")
      out.append(api.Answer(image=q.rgb, task=q.task, question=q.question(), text=text,
                            grounded=grounded, det_probs={"real": 0.2, "fake": 0.8},
                            cls_probs=dict.fromkeys(tokens.CLS_CLASSES, 0.0), box=tuple(q.box)))
    return out


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
  """skimage's astronaut, written by the data_prep environment (skimage lives there)."""
  path = tmp_path_factory.mktemp("web") / "astronaut.png"
  cmd, env = prep_env.prep_command(["sample", "astronaut", "--out", str(path)])
  subprocess.run(cmd, env=env, check=True, capture_output=True)
  return path


@pytest.fixture(scope="module")
def server(astronaut):
  model = ScriptedModel()
  app = serve_lib.create_app(model, serve_lib.Limits(), sample=astronaut)
  with serve_lib.in_background(app) as url:
    yield url, model


@pytest.fixture(scope="module")
def page(server):
  from playwright.sync_api import sync_playwright

  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  assert chromium, "no Chromium on PATH: `make main-env` installs Debian's chromium package"
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, headless=True,
                                args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    yield page
    browser.close()


@pytest.mark.slow
def test_upload_draw_a_box_ask_b_age_and_see_the_coloured_answer(server, page, astronaut, tmp_path):
  url, model = server
  page.goto(url + "/")
  page.wait_for_function("document.querySelectorAll('#task option').length === 12")
  assert page.locator("#concepts option").count() == 184  # the searchable FICT tree
  assert page.locator("#sample").is_visible()

  page.set_input_files("#file", str(astronaut))
  page.wait_for_function("!document.getElementById('ask').disabled")
  page.select_option("#task", "b-age")
  assert page.locator("#region").is_disabled()

  # The canvas shows the 512-px astronaut at 1:1; drag a box over her right eye.
  view = page.locator("#view").bounding_box()
  assert (round(view["width"]), round(view["height"])) == (514, 514)  # 512 + the border
  x0, y0 = view["x"] + 1, view["y"] + 1
  page.mouse.move(x0 + 180, y0 + 90)
  page.mouse.down()
  page.mouse.move(x0 + 210, y0 + 110, steps=4)
  page.mouse.move(x0 + 230, y0 + 130, steps=4)
  page.mouse.up()
  assert page.locator("#boxinfo").inner_text() == "[180, 90, 230, 130]"

  page.click("#ask")
  page.wait_for_selector("#answer[data-ready='1']", timeout=30_000)
  sent = model.asked[-1]
  assert sent.task == "b-age" and sent.box == pytest.approx((180, 90, 230, 130), abs=1)

  # Each phrase is coloured like its mask, and the masks are drawn where they belong.
  palette = overlay.palette(12)
  spans = page.locator("#answer .phrase")
  assert spans.all_inner_texts() == ["edges of right eye", "nose"]
  for k in range(2):
    want = "rgb({}, {}, {})".format(*palette[k])
    assert spans.nth(k).evaluate("e => getComputedStyle(e).backgroundColor") == want
  assert page.locator("#view").get_attribute("data-masks") == "2"
  pixel = page.evaluate("""([x, y]) => Array.from(
      document.getElementById('view').getContext('2d').getImageData(x, y, 1, 1).data)""", [205, 110])
  original = page.evaluate("""async ([x, y]) => {
      const bmp = await createImageBitmap(await (await fetch('/sample')).blob());
      const c = new OffscreenCanvas(bmp.width, bmp.height), g = c.getContext('2d');
      g.drawImage(bmp, 0, 0);
      return Array.from(g.getImageData(x, y, 1, 1).data); }""", [205, 110])
  blended = [(o + c) / 2 for o, c in zip(original[:3], palette[0])]
  assert np.allclose(pixel[:3], blended, atol=3), (pixel, original, palette[0])
  outside = page.evaluate("""([x, y]) => Array.from(
      document.getElementById('view').getContext('2d').getImageData(x, y, 1, 1).data)""", [300, 300])
  assert outside[:3] != pixel[:3]
  assert "fake 80.0%" in page.locator("#probs").inner_text()

  shot = tmp_path / "web.png"
  page.screenshot(path=str(shot), full_page=True)
  assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_the_page_says_what_is_wrong(server, page):
  url, _ = server
  page.goto(url + "/")
  page.wait_for_function("document.querySelectorAll('#task option').length === 12")
  page.click("#sample")  # the server's sample face
  page.wait_for_function("!document.getElementById('ask').disabled")
  page.select_option("#task", "b-loc")
  page.click("#ask")  # no box drawn
  assert page.locator("#status").inner_text() == "draw a box on the image first"
  page.select_option("#task", "r-loc")
  page.fill("#region", "noze")
  page.click("#ask")
  page.wait_for_function("document.getElementById('status').textContent.includes('FICT')")
  assert "nearest FICT names: 'nose'" in page.locator("#status").inner_text()
