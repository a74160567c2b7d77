"""`sk-jax serve` in a subprocess, driven from headless Chromium (Selenium 4 with Debian's
`chromium` and `chromium-driver`): shared by tests/serve/test_serve_browser.py and
benchmarks/serve_latency.py.

    with ServeProcess(["--size", "128"], log_path) as server, chromium() as driver:
      driver.get(server.url)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

INSTALL_HINT = (
  "install Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver), "
  "as .ci/run does"
)


def find_chromium() -> tuple[str, str]:
  """(browser, chromedriver) paths; RuntimeError naming what is missing and how to install it."""
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  driver = shutil.which("chromedriver")
  missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
  if missing:
    raise RuntimeError(f"{' and '.join(missing)} not found on PATH; {INSTALL_HINT}")
  return browser, driver


def chromium(width: int = 1200, height: int = 900):
  """A headless Chromium WebDriver on the system's chromedriver (Selenium Manager never runs, so
  nothing is downloaded)."""
  from selenium import webdriver
  from selenium.webdriver.chrome.options import Options
  from selenium.webdriver.chrome.service import Service

  browser, driver = find_chromium()
  options = Options()
  options.binary_location = browser
  # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
  for arg in (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
    f"--window-size={width},{height}",
  ):
    options.add_argument(arg)
  # The page's console, for `console_errors`.
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  return webdriver.Chrome(service=Service(driver), options=options)


def console_errors(driver) -> list[str]:
  """The page's console errors since the last call (JavaScript exceptions, failed requests)."""
  return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


class ServeProcess:
  """`python -m sk_jax.cli serve --port 0 ARGS` until the context exits; `url` once it is ready
  (listening, and warmed up unless --no-warmup). Its output goes to `log_path`; `env` is added
  to this process's environment."""

  def __init__(self, args, log_path: str, timeout: float = 300.0, env: dict | None = None):
    self.args, self.log_path, self.timeout = list(args), log_path, timeout
    self.env = {**os.environ, **(env or {})}
    self.url: str | None = None
    self.process: subprocess.Popen | None = None

  def log(self) -> str:
    with open(self.log_path, errors="replace") as f:
      return f.read()

  def _fail(self, what: str):
    raise RuntimeError(f"sk-jax serve {what}; its output:\n{self.log()[-4000:]}")

  def __enter__(self) -> "ServeProcess":
    command = [sys.executable, "-m", "sk_jax.cli", "serve", "--port", "0", *self.args]
    with open(self.log_path, "wb") as log:
      self.process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
      )
    deadline = time.monotonic() + self.timeout
    try:
      while self.url is None:
        if self.process.poll() is not None:
          self._fail(f"exited with {self.process.returncode}")
        if time.monotonic() > deadline:
          self._fail(f"printed no address within {self.timeout:.0f} s")
        found = re.search(r"sk-jax serve: (http://\S+/)", self.log())
        self.url = found.group(1) if found else None
        time.sleep(0.1)
      while not self.status().get("ready"):
        if self.process.poll() is not None:
          self._fail(f"exited with {self.process.returncode}")
        if time.monotonic() > deadline:
          self._fail(f"was not ready within {self.timeout:.0f} s")
        time.sleep(0.2)
    except BaseException:
      self.stop()
      raise
    return self

  def status(self, timeout: float = 30.0) -> dict:
    """GET /api/status (its JSON)."""
    with urllib.request.urlopen(self.url + "api/status", timeout=timeout) as r:
      return json.load(r)

  def stop(self) -> None:
    if self.process is not None and self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=20)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()

  def __exit__(self, *exc) -> None:
    self.stop()
