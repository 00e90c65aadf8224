"""The web page's picture in docs/: `fifa serve` on a checkpoint, the astronaut's photo
uploaded, B-AGE asked about a box drawn over her right eye, in headless Chromium.

  .venv/bin/python scripts/web_screenshot.py --checkpoint demo_out/train \
      --photo demo_out/astronaut.png --out docs/web_b_age.png
"""

from __future__ import annotations

import argparse
import shutil

from playwright.sync_api import sync_playwright

from fifa_jax import api, serve as serve_lib


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--photo", required=True, help="a photo with a face (the astronaut)")
  p.add_argument("--out", required=True)
  p.add_argument("--box", default="177,87,226,131", help="x1,y1,x2,y2 in the photo's pixels")
  args = p.parse_args(argv)

  model = api.FiFa.load(args.checkpoint, max_new_tokens=160)
  app = serve_lib.create_app(model, serve_lib.Limits(faces="largest"), sample=args.photo)
  x1, y1, x2, y2 = (float(v) for v in args.box.split(","))
  with serve_lib.in_background(app) as url, sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                 args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1400, "height": 640})
    page.goto(url + "/")
    page.wait_for_function("document.querySelectorAll('#task option').length === 12")
    page.set_input_files("#file", args.photo)
    page.wait_for_function("!document.getElementById('ask').disabled")
    page.select_option("#task", "b-age")
    page.select_option("#faces", "largest")
    view = page.locator("#view").bounding_box()
    scale = view["width"] / page.evaluate("document.getElementById('view').width")
    ox, oy = view["x"] + 1, view["y"] + 1
    page.mouse.move(ox + x1 * scale, oy + y1 * scale)
    page.mouse.down()
    page.mouse.move(ox + x2 * scale, oy + y2 * scale, steps=6)
    page.mouse.up()
    page.click("#ask")
    page.wait_for_selector("#answer[data-ready='1']", timeout=300_000)
    page.screenshot(path=args.out, full_page=True)
    browser.close()
  model.close()
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
