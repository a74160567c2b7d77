"""`sk-jax serve` in a real browser: the server in a subprocess, driven from headless Chromium
(Debian's `chromium` and `chromium-driver`, which .ci/run installs) through Selenium."""

import base64
import http.client
import io
import json
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image
from skimage import data

from sk_jax.serve import browser as serve_browser

SIZE = 128
MAX_PIXELS = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  try:
    serve_browser.find_chromium()
  except RuntimeError as e:
    pytest.fail(str(e), pytrace=False)
  log = tmp_path_factory.mktemp("serve") / "serve.log"
  args = ["--size", str(SIZE), "--max-pixels", str(MAX_PIXELS), "--max-upload-mb", "1"]
  # No warm-up and no compile cache: the first press compiles, so that it lasts long enough
  # (seconds) for the test to see the server answer while a stylization runs.
  args.append("--no-warmup")
  env = {"JAX_ENABLE_COMPILATION_CACHE": "false"}
  with serve_browser.ServeProcess(args, str(log), env=env) as s:
    yield s


@pytest.fixture(scope="module")
def driver(server):
  d = serve_browser.chromium()
  d.set_script_timeout(30)
  yield d
  d.quit()


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
  """A 451 x 300 content, a 512 x 512 style, a corrupt file and one with too many pixels."""
  d = tmp_path_factory.mktemp("uploads")
  Image.fromarray(data.chelsea()).save(d / "chelsea.png")
  Image.fromarray(data.gravel()).save(d / "gravel.png")
  (d / "corrupt.png").write_bytes(b"this is not a PNG file\n" * 8)
  Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(d / "huge.png")
  return d


def _by_id(driver, name):
  from selenium.webdriver.common.by import By

  return driver.find_element(By.ID, name)


def _wait(condition, timeout, what, poll=None):
  """Calls condition() until it is truthy (and poll() meanwhile); fails naming `what`."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if poll is not None:
      poll()
    value = condition()
    if value:
      return value
    time.sleep(0.02)
  pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _answers(driver) -> int:
  return int(driver.execute_script("return document.body.dataset.answers || 0"))


def _press(driver, timeout=120, poll=None):
  """Presses Stylize and waits until the page has shown its answer (an image or an error)."""
  before = _answers(driver)
  _by_id(driver, "go").click()
  _wait(lambda: _answers(driver) > before, timeout, "the page's answer", poll)


def test_stylize_two_uploads_with_slider(server, driver, uploads):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys

  driver.get(server.url)
  _by_id(driver, "content-file").send_keys(str(uploads / "chelsea.png"))
  _by_id(driver, "style-files").send_keys(str(uploads / "gravel.png"))
  # The page preselects the first packaged style; uncheck it so that only the upload is used.
  driver.find_element(By.CSS_SELECTOR, "#style-examples img[alt=brick]").click()
  names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#style-list .name")]
  assert names == ["gravel.png"]
  alpha = _by_id(driver, "alpha")
  alpha.click()
  alpha.send_keys(Keys.END)
  alpha.send_keys(*[Keys.ARROW_LEFT] * 10)
  assert _by_id(driver, "alpha-value").text == "0.50"

  statuses = []
  _press(driver, poll=lambda: statuses.append(server.status(timeout=10)))

  assert not _by_id(driver, "error").is_displayed(), _by_id(driver, "error").text
  # The page kept answering while the stylization ran (on a worker thread, not the event loop).
  assert any(s["busy"] for s in statuses), f"no status answered during the run: {statuses}"
  # 451 x 300 with its short side resized to 128.
  expected = (round(451 * SIZE / 300), SIZE)
  size = driver.execute_script(
    "const i = document.getElementById('result'); return [i.naturalWidth, i.naturalHeight];"
  )
  assert tuple(size) == expected
  assert "alpha 0.5," in _by_id(driver, "status").text
  download = _by_id(driver, "download")
  assert download.get_attribute("download") == "chelsea_stylized_gravel.png"
  # What the download link holds: a PNG of that size, and not the content resized.
  b64 = driver.execute_async_script(
    """const done = arguments[arguments.length - 1];
    fetch(document.getElementById('download').href).then((r) => r.blob()).then((b) => {
      const reader = new FileReader();
      reader.onload = () => done(reader.result.split(',')[1]);
      reader.readAsDataURL(b);
    });"""
  )
  out = Image.open(io.BytesIO(base64.b64decode(b64)))
  assert out.format == "PNG" and out.size == expected
  content = Image.fromarray(data.chelsea()).resize(expected, Image.Resampling.BICUBIC)
  difference = np.abs(np.asarray(out, np.float32) - np.asarray(content, np.float32)) / 255
  assert difference.mean() > 0.02
  # The thumbnails, the preview and the result loaded; no script failed.
  thumbnails = driver.execute_script(
    "return [...document.querySelectorAll('#style-examples img')].map((i) => i.naturalWidth);"
  )
  assert len(thumbnails) == 10 and min(thumbnails) > 0
  assert serve_browser.console_errors(driver) == []


def test_bad_uploads_show_errors_and_server_keeps_running(server, driver, uploads):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select

  driver.get(server.url)
  style = str(uploads / "gravel.png")
  _by_id(driver, "style-files").send_keys(style)
  driver.find_element(By.CSS_SELECTOR, "#style-examples img[alt=brick]").click()
  for name, message in (
    ("corrupt.png", "corrupt.png: not an image file (unrecognised format)"),
    ("huge.png", f"huge.png: 600x600 is 360000 pixels, more than --max-pixels={MAX_PIXELS}"),
  ):
    _by_id(driver, "content-file").send_keys(str(uploads / name))
    _press(driver)
    assert _by_id(driver, "error").is_displayed()
    assert _by_id(driver, "error").text == message
    assert not _by_id(driver, "result").is_displayed()
  assert server.process.poll() is None
  assert server.status()["ready"]
  # A packaged content clears the upload; the next press works (chelsea, as in the test above:
  # the same shapes, so no new compile).
  Select(_by_id(driver, "content-example")).select_by_value("chelsea")
  assert _by_id(driver, "preview").get_attribute("src").endswith("/examples/chelsea.jpg")
  _press(driver)
  assert not _by_id(driver, "error").is_displayed(), _by_id(driver, "error").text
  size = driver.execute_script(
    "const i = document.getElementById('result'); return [i.naturalWidth, i.naturalHeight];"
  )
  assert tuple(size) == (round(451 * SIZE / 300), SIZE)


def test_oversized_upload_is_refused_before_it_is_read(server):
  # A client announcing 1.5 MB gets the answer before sending any of it.
  host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
  connection = http.client.HTTPConnection(host, int(port), timeout=30)
  connection.putrequest("POST", "/api/stylize")
  connection.putheader("Content-Type", "multipart/form-data; boundary=b")
  connection.putheader("Content-Length", str(3 * 2**19))
  connection.endheaders()
  response = connection.getresponse()
  assert response.status == 413
  assert json.load(response) == {
    "error": "the upload is 1.5 MB, more than this server's limit of 1 MB (--max-upload-mb)"
  }
  connection.close()
  assert server.status()["ready"]
