"""`sk-jax serve` without a browser: the engine behind the page (uploads, checks, one stylization
at a time) and the command's one-line errors. tests/serve/test_serve_browser.py drives the page."""

import io
import socket
import struct
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from compile_events import compile_events
from PIL import Image

from sk_jax.cli import main
from sk_jax.errors import InputError
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import images
from sk_jax.serve import app as serve

SIZE = 32


@pytest.fixture(scope="module")
def stylizer():
  """The bundled generator, as `sk-jax serve` uses by default."""
  return Stylizer.load()


def _png(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(images.to_uint8(array)).save(buf, format="PNG")
  return buf.getvalue()


def _png_header_only(width, height) -> bytes:
  """A PNG whose header claims width x height pixels, with almost no data: a decompression bomb's
  first bytes."""
  chunk = lambda kind, body: (
    struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  )
  ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_engine_gives_the_stylizers_result(stylizer, photo, texture, tmp_path):
  """Uploads and a packaged name, two weighted styles, alpha and preserve colour reach
  `Stylizer.stylize` as the CLI passes them; the PNG holds its result."""
  engine = serve.Engine(stylizer, size=SIZE, max_size=64)
  uploads = {"photo.png": _png(photo), "my texture.png": _png(texture[::2])}
  for name, data in uploads.items():
    (tmp_path / name).write_bytes(data)
  job = serve.Job(
    serve.Upload("photo.png", uploads["photo.png"]),
    (serve.Upload("my texture.png", uploads["my texture.png"]), "skimage:hubble_deep_field"),
    weights=(0.7, 0.3),
    alpha=0.6,
    preserve_color=True,
  )
  result = engine.run(job)
  expected = stylizer.stylize(
    str(tmp_path / "photo.png"),
    [str(tmp_path / "my texture.png"), "skimage:hubble_deep_field"],
    size=SIZE,
    alpha=0.6,
    style_weights=[0.7, 0.3],
    preserve_color=True,
  )
  got = np.asarray(Image.open(io.BytesIO(result.png)).convert("RGB"))
  assert got.shape == expected.shape == (SIZE, SIZE, 3)
  assert (result.width, result.height) == (SIZE, SIZE)
  # One uint8 level: where the float result lies on a rounding boundary.
  assert np.abs(got.astype(int) - images.to_uint8(expected).astype(int)).max() <= 1
  assert result.filename == "photo_stylized_my_texture+hubble_deep_field.png"
  assert 0.0 <= result.kept <= 1.0
  assert engine.status() == {"ready": False, "busy": False, "done": 1}


def test_a_new_upload_size_inside_a_bucket_traces_and_compiles_nothing(stylizer, photo, texture):
  """The page's uploads of new sizes (here 32 x 80, then 32 x 72 and 32 x 88, one 64 x 128
  bucket that no other test here uses) run the programs the first one loaded or traced: no
  trace, no XLA compilation."""
  engine = serve.Engine(stylizer, size=SIZE, max_size=64)
  style = serve.Upload("style.png", _png(texture[:40, :40]))
  job = lambda h, w: serve.Job(serve.Upload("photo.png", _png(photo[:h, :w])), (style,))
  with compile_events() as first:
    assert (engine.run(job(64, 160)).width, engine.run(job(64, 160)).height) == (80, 32)
  assert first, "the first size should trace (else this test means nothing)"
  with compile_events() as later:
    sizes = [(r.width, r.height) for r in (engine.run(job(64, 144)), engine.run(job(64, 176)))]
  assert sizes == [(72, 32), (88, 32)]
  assert not later, later


@pytest.mark.parametrize(
  "name, data",
  [
    ("notes.png", b"plain text, not an image\n" * 4),
    ("empty.jpg", b""),
    ("cut.png", None),
    ("bomb.png", _png_header_only(50_000, 50_000)),
    ("tiny.png", None),
  ],
)
def test_bad_upload_gets_the_clis_message(stylizer, photo, tmp_path, name, data):
  """Each bad upload is refused with the message the CLI gives for the same file, naming the
  upload (not a temporary path); the engine stays usable."""
  if name == "cut.png":
    data = _png(photo)[:2000]
  elif name == "tiny.png":
    data = _png(photo[:8, :8])
  engine = serve.Engine(stylizer, size=SIZE, max_size=64)
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(InputError) as cli:
    images.prepare(str(path), SIZE)
  with pytest.raises(InputError) as page:
    engine.run(serve.Job(serve.Upload(name, data), ("skimage:brick",)))
  assert str(page.value) == str(cli.value).replace(str(path), name)
  assert str(page.value).startswith(f"{name}: ")
  assert engine.status()["busy"] is False and not engine.lock.locked()


@pytest.mark.parametrize(
  "change, message",
  [
    ({"size": 128}, "size must be between 16 and 64 (this server's --max-size), got 128"),
    ({"styles": ()}, "choose at least one style"),
    ({"styles": ("skimage:brick",) * 9}, "at most 8 styles at once, got 9"),
    ({"alpha": 1.5}, "alpha must be in [0, 1], got 1.5"),
    ({"weights": (-1.0, 2.0)}, "style weights must be non-negative, got -1, 2"),
    ({"weights": (1.0,)}, "style weights: 1 weight(s) for 2 style(s); give one weight per style"),
    ({"content": "skimage:nope"}, "skimage:nope: 'nope' is not a packaged scikit-image image"),
    ({"content": "/etc/passwd"}, "/etc/passwd: not a packaged example (expected skimage:NAME)"),
  ],
)
def test_bad_settings_are_one_line_messages(stylizer, change, message):
  engine = serve.Engine(stylizer, size=SIZE, max_size=64)
  job = serve.Job("skimage:astronaut", ("skimage:brick", "skimage:grass"))
  with pytest.raises(InputError) as e:
    engine.run(serve.Job(**{**job.__dict__, **change}))
  assert str(e.value).startswith(message)


def test_warm_up_runs_the_default_pair(stylizer, caplog):
  engine = serve.Engine(stylizer, size=SIZE, max_size=64)
  with caplog.at_level("INFO", logger="sk_jax.serve"):
    engine.start_warm_up().join(timeout=300)
  assert engine.status() == {"ready": True, "busy": False, "done": 0}
  # One line, and no "warm-up failed".
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 1, messages
  assert messages[0].startswith(f"warm-up: skimage:astronaut with skimage:brick: {SIZE}x{SIZE} in ")


def test_one_stylization_at_a_time(stylizer):
  """Requests from several threads run one after another on the one Stylizer."""

  class Watched:
    """The real Stylizer, counting how many of its calls run at once."""

    def __init__(self):
      self.active, self.most = 0, 0
      self.count = threading.Lock()

    def stylize(self, *args, **kwargs):
      with self.count:
        self.active += 1
        self.most = max(self.most, self.active)
      try:
        # Long enough for the other threads to arrive while this one runs.
        time.sleep(0.2)
        return stylizer.stylize(*args, **kwargs)
      finally:
        with self.count:
          self.active -= 1

  watched = Watched()
  engine = serve.Engine(watched, size=SIZE, max_size=64)
  job = serve.Job("skimage:astronaut", ("skimage:brick",))
  results = [None] * 3
  decode = lambda png: np.asarray(Image.open(io.BytesIO(png)), np.int32)
  run = lambda i: results.__setitem__(i, decode(engine.run(job).png))
  threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert watched.most == 1
  assert all(r is not None and np.abs(r - results[0]).max() <= 1 for r in results)
  assert engine.status()["done"] == 3


def test_serve_refuses_a_taken_port(capsys):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    assert main(["serve", "--port", str(port)]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err
  assert err.startswith(f"sk-jax serve: error: 127.0.0.1:{port}: cannot listen there (")


def test_serve_without_the_extra(capsys, monkeypatch):
  # None in sys.modules makes `import uvicorn` raise ImportError, as when it is not installed.
  monkeypatch.setitem(sys.modules, "uvicorn", None)
  assert main(["serve"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("sk-jax serve: error: sk-jax serve needs the serve extra: pip install ")
  assert err.count("\n") == 1


@pytest.mark.parametrize(
  "args, message",
  [
    (["--size", "2048"], "--size must be between 16 and --max-size (1024), got 2048"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be positive, got 0.0"),
    (["--port", "70000"], "--port must be in 0..65535, got 70000"),
  ],
)
def test_serve_bad_flags(capsys, args, message):
  assert main(["serve", *args]) == 2
  assert capsys.readouterr().err == f"sk-jax serve: error: {message}\n"
