"""The web page's time from pressing Stylize to the image shown, in headless Chromium.

  python benchmarks/serve_latency.py --out benchmarks/results/serve_latency_cpu.json \
    [--size 512] [--repeats 5] [--screenshot docs/images/serve.png]

Starts `sk-jax serve --size SIZE` (bundled generator, warmed up on the page's default pair:
skimage:astronaut with skimage:brick) in a subprocess and drives the page as a person would
(packaged examples, alpha changed between presses). Times are the page's own
(`performance.now()` from the click to the image's load event), beside the server's time for
the same request (reading, stylizing, PNG encoding) and the server process's CPU-seconds for it
(which other load on the machine changes far less than wall time). Cases:
  warm:      the default pair, --repeats presses (the program compiled at start-up);
  new shape: another content (chelsea, 451 x 300, so SIZE x 1.5 SIZE after resizing): its first
             press (a new shape: a compile, or a hit in the persistent compile cache) and a
             second one.
Needs the serve extra, selenium, and Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from PIL import Image, ImageOps

from sk_jax.serve import browser as serve_browser


def _press(driver, alpha: float, timeout: float = 600.0) -> dict:
  """Sets alpha, presses Stylize, waits for the answer; the page's timings of that press."""
  from selenium.webdriver.common.by import By

  before = driver.execute_script("return Number(document.body.dataset.answers || 0)")
  driver.execute_script(
    "const a = document.getElementById('alpha'); a.value = arguments[0];"
    "a.dispatchEvent(new Event('input'));",
    alpha,
  )
  driver.find_element(By.ID, "go").click()
  deadline = time.monotonic() + timeout
  while driver.execute_script("return Number(document.body.dataset.answers || 0)") == before:
    if time.monotonic() > deadline:
      raise RuntimeError(f"no answer within {timeout} s")
    time.sleep(0.02)
  error = driver.find_element(By.ID, "error")
  if error.is_displayed():
    raise RuntimeError(f"the page shows an error: {error.text}")
  return driver.execute_script("return window.skLast")


def _summary(presses) -> dict:
  ms = [p["ms"] / 1000 for p in presses]
  server = [p["serverSeconds"] for p in presses]
  cpu = [p["serverCpuSeconds"] for p in presses]
  return {
    "press_to_image_s": ms,
    "median_press_to_image_s": statistics.median(ms),
    "server_s": server,
    "median_server_s": statistics.median(server),
    "server_cpu_s": cpu,
    "median_server_cpu_s": statistics.median(cpu),
    "image_size": presses[0]["size"],
  }


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default="benchmarks/results/serve_latency_cpu.json")
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--screenshot", help="a PNG of the page after the warm presses")
  args = p.parse_args()

  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select

  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    log = os.path.join(tmp, "serve.log")
    started = time.perf_counter()
    with serve_browser.ServeProcess(["--size", str(args.size)], log) as server:
      ready_s = time.perf_counter() - started
      driver = serve_browser.chromium(1200, 960)
      try:
        driver.get(server.url)
        alphas = [1.0, 0.75, 0.5, 0.25, 1.0]
        warm = [_press(driver, alphas[i % len(alphas)]) for i in range(args.repeats)]
        if args.screenshot:
          driver.execute_script("window.scrollTo(0, 0)")
          shot = os.path.join(tmp, "page.png")
          driver.save_screenshot(shot)
          page = Image.open(shot).convert("RGB")
          # Cropped to what is not white, in 256 colours: a few hundred KB, for the README.
          left, top, right, bottom = ImageOps.invert(page.convert("L")).getbbox()
          page = page.crop((0, 0, min(page.width, right + 20), min(page.height, bottom + 20)))
          page.quantize(256).save(args.screenshot, optimize=True)
        Select(driver.find_element(By.ID, "content-example")).select_by_value("chelsea")
        new_shape = [_press(driver, 1.0), _press(driver, 0.5)]
      finally:
        driver.quit()
      server_log = server.log()

  result = {
    "benchmark": "serve_latency",
    "what": "press Stylize -> image shown, headless Chromium on the same machine as sk-jax serve",
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
    "python": sys.version.split()[0],
    "size": args.size,
    "start_to_ready_s": ready_s,
    "warm_up_ok": "warm-up failed" not in server_log,
    "load_average_before": load_before,
    "load_average_after": os.getloadavg(),
    "warm": {"content": "skimage:astronaut", "style": "skimage:brick", **_summary(warm)},
    "new_shape_first_press_s": new_shape[0]["ms"] / 1000,
    "new_shape_first_server_s": new_shape[0]["serverSeconds"],
    "new_shape_first_server_cpu_s": new_shape[0]["serverCpuSeconds"],
    "new_shape_second_press_s": new_shape[1]["ms"] / 1000,
    "new_shape_image_size": new_shape[0]["size"],
    "server_log": server_log.splitlines()[-10:],
  }
  try:
    import jax

    result["jax"] = jax.__version__
  except ImportError:
    pass
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
  print(json.dumps({k: v for k, v in result.items() if k != "server_log"}, indent=1))


if __name__ == "__main__":
  main()
