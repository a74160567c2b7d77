"""The one rule for what the tools read and write, checked before any compute.

Inputs (`check_input`) must be existing regular files or directories; nothing is opened to find
out (a FIFO would block), and a symbolic link loop or a device is named as such.

Outputs are planned as `Output`s and checked together by `check_outputs`, which every writer
calls before it computes anything:
  - an output never resolves to an input (through symbolic links, `..` and hard links), and no
    input lies inside a checkpoint directory that would be replaced;
  - names within one run are unique;
  - an image or video file may replace an existing image or video at that path (as image tools
    do), never a file of another kind, a directory or a device; the image writer must exist;
  - a checkpoint directory or an export file replaces only one of ours, and only with
    `overwrite` (--overwrite); never a file or directory of another kind;
  - a directory output writes only into a new or empty directory, or one that sk-jax wrote (it
    holds MARKER, the list of files sk-jax put there), and never over a file it did not write;
  - every output's directory is writable (a probe file is created and removed).
A writer calls `claim_directory` just before it writes into a directory output.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import stat
import tempfile
from collections.abc import Callable

from sk_jax.errors import InputError

MARKER = ".sk-jax-outputs"
CHECKPOINT_FORMATS = ("sk-jax-generator", "sk-jax-vgg16")
# Container signatures of the video formats that Pillow does not open: (offset, bytes).
_VIDEO_MAGIC = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (8, b"AVI "))


# ----------------------------------------------------------------------------- inputs


def _kind_of(mode: int) -> str:
  for test, name in (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
  ):
    if test(mode):
      return name
  return "not a regular file"


def check_input(path: str, expected: str = "an image file", directory_ok: bool = False) -> str:
  """'file' or 'dir' for an input that exists; else an InputError naming `path` and why.

  A file must be regular and non-empty; it is only stat'ed here, never opened.
  """
  try:
    st = os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise InputError(f"{path}: symbolic link loop") from None
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
      what = "file or directory" if directory_ok else "file"
      if os.path.islink(path):
        raise InputError(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
      raise InputError(f"{path}: no such {what}") from None
    raise InputError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
  if stat.S_ISDIR(st.st_mode):
    if directory_ok:
      return "dir"
    raise InputError(f"{path}: is a directory, expected {expected}")
  if not stat.S_ISREG(st.st_mode):
    kind = _kind_of(st.st_mode)
    raise InputError(f"{path}: {kind}, not a regular file; expected {expected}")
  if st.st_size == 0:
    raise InputError(f"{path}: empty file")
  return "file"


# ----------------------------------------------------------------------------- outputs


@dataclasses.dataclass(frozen=True)
class Output:
  """One thing a command writes. kind: "image" or "video" (a file that may replace an image or
  video), "checkpoint" (an sk-jax checkpoint directory), "export" (a file that `owned` recognises
  as one of ours), "dir" (a directory that will hold `names`, relative paths)."""

  path: str
  kind: str
  names: tuple[str, ...] = ()
  # What made each name (for the collision message), parallel to `names`.
  sources: tuple[str, ...] = ()
  owned: Callable[[str], bool] | None = None
  what: str = "output"

  def files(self) -> list[tuple[str, str]]:
    """(path, source) of every file this output writes (a directory: its names)."""
    if self.kind != "dir":
      return [(self.path, self.what)]
    sources = self.sources or ("",) * len(self.names)
    return [(os.path.join(self.path, n), s) for n, s in zip(self.names, sources)]


def image(path: str) -> Output:
  return Output(path, "image", what="image")


def video(path: str) -> Output:
  return Output(path, "video", what="video")


def checkpoint(path: str, what: str = "checkpoint") -> Output:
  return Output(path, "checkpoint", what=what)


def export(path: str, owned: Callable[[str], bool], what: str) -> Output:
  return Output(path, "export", owned=owned, what=what)


def directory(path: str, names, sources=()) -> Output:
  return Output(path, "dir", tuple(names), tuple(sources), what="directory")


def _same(a: str, b: str) -> bool:
  """True when a and b name one file or directory: through symbolic links, `..` and hard links."""
  if os.path.realpath(a) == os.path.realpath(b):
    return True
  try:
    return os.path.samefile(a, b)
  except OSError:  # one of them does not exist (yet)
    return False


def _inside(path: str, directory: str) -> bool:
  real, top = os.path.realpath(path), os.path.realpath(directory)
  return real != top and real.startswith(top.rstrip(os.sep) + os.sep)


def checkpoint_format(path: str) -> str | None:
  """The format of an sk-jax checkpoint directory at `path`, else None (its meta JSON read
  directly: no Orbax, no event loop)."""
  meta = os.path.join(path, "meta", "metadata")
  try:
    if not os.path.isfile(meta) or os.path.getsize(meta) > 1 << 16:
      return None
    with open(meta) as f:
      fmt = json.load(f).get("format")
  except (OSError, ValueError, AttributeError):  # damaged: not provably ours
    return None
  return fmt if fmt in CHECKPOINT_FORMATS else None


def _marker_names(directory: str) -> set[str] | None:
  """The files sk-jax wrote into `directory` (its MARKER), or None when it has none."""
  marker = os.path.join(directory, MARKER)
  if not os.path.isfile(marker):
    return None
  try:
    with open(marker) as f:
      names = json.load(f).get("files", [])
    return {n for n in names if isinstance(n, str)}
  except (OSError, ValueError, AttributeError):
    return None


def is_media(path: str) -> bool:
  """True for a regular file that Pillow opens (an image, GIF, WebP, APNG) or a video container
  (MP4/MOV, Matroska/WebM, AVI); only its header is read."""
  from PIL import Image, UnidentifiedImageError

  try:
    with open(path, "rb") as f:
      head = f.read(16)
    if any(head[o : o + len(m)] == m for o, m in _VIDEO_MAGIC):
      return True
    with Image.open(path):
      return True
  except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
    return False


def check_image_writer(path: str) -> None:
  """InputError unless Pillow can write an RGB image with `path`'s extension (tried in memory)."""
  from PIL import Image

  ext = os.path.splitext(path)[1].lower()
  fmt = Image.registered_extensions().get(ext)
  if fmt is not None:
    try:
      Image.new("RGB", (16, 16)).save(io.BytesIO(), format=fmt)
      return
    except Exception:  # no writer (PSD), a stub without a handler (HDF5), RGB unsupported
      pass
  raise InputError(
    f"{path}: cannot write images with the extension {ext or '(none)'!r}; use .png or .jpg"
  )


def _check_existing(out: Output, overwrite: bool) -> None:
  path = out.path
  if out.kind in ("image", "video", "export"):
    if out.kind == "image":
      check_image_writer(path)
    if not os.path.lexists(path):
      return
    if os.path.isdir(path):
      raise InputError(f"{path}: is a directory, expected a file name for the {out.what}")
    if not os.path.isfile(path):
      raise InputError(f"{path}: exists and is not a regular file; refusing to replace it")
    if out.kind == "export":
      if not out.owned(path):
        raise InputError(
          f"{path}: exists and is not an sk-jax {out.what}; refusing to replace it "
          "(choose another --output)"
        )
      if not overwrite:
        raise InputError(
          f"{path}: already holds an sk-jax {out.what}; pass --overwrite to replace it"
        )
    elif not is_media(path):
      raise InputError(
        f"{path}: exists and is not an image or video; refusing to replace it "
        "(choose another --output)"
      )
    return
  if not os.path.lexists(path):
    return
  if not os.path.isdir(path):
    raise InputError(
      f"{path}: exists and is not a directory; refusing to replace it (choose another output)"
    )
  entries = os.listdir(path)
  if out.kind == "checkpoint":
    if not entries:
      return
    fmt = checkpoint_format(path)
    if fmt is None:
      raise InputError(
        f"{path}: is a non-empty directory that is not an sk-jax checkpoint; refusing "
        "to replace it (choose a new or empty directory)"
      )
    if not overwrite:
      raise InputError(
        f"{path}: already holds an sk-jax checkpoint ({fmt}); pass --overwrite to replace it"
      )
    return
  ours = _marker_names(path)
  if entries and ours is None:
    raise InputError(
      f"{path}: is a non-empty directory that sk-jax did not write (no {MARKER}); refusing to "
      "write into it (choose a new or empty directory)"
    )
  for name in out.names:
    if os.path.lexists(os.path.join(path, name)) and name not in (ours or ()):
      raise InputError(
        f"{os.path.join(path, name)}: exists and was not written by sk-jax; refusing to "
        "replace it (choose a new or empty directory)"
      )


def check_outputs(outputs, inputs=(), overwrite: bool = False) -> None:
  """The rule of this module's docstring for `outputs` (Outputs), before any compute.

  inputs: the paths the run reads (files or directories). Those that do not exist, such as
  packaged "skimage:..." names, are skipped: there is nothing of theirs to overwrite (a missing
  input file is the reader's one-line error, still before anything is written).
  InputError naming the first path that breaks it.
  """
  outputs = [o for o in outputs if o is not None]
  sources = [p for p in dict.fromkeys(os.fspath(p) for p in inputs) if os.path.lexists(p)]
  planned: dict[str, str] = {}
  for out in outputs:
    # A directory's files first: the message names the file that would be lost.
    for path, source in (out.files() if out.kind == "dir" else []) + [(out.path, out.what)]:
      for src in sources:
        if _same(path, src):
          raise InputError(
            f"{path}: is the input {src}; refusing to overwrite an input (choose another --output)"
          )
        if out.kind == "checkpoint" and _inside(src, path) and os.path.lexists(path):
          raise InputError(
            f"{path}: holds the input {src}; refusing to replace it (choose another output)"
          )
    for path, source in out.files():
      key = os.path.normcase(os.path.abspath(path))
      if key in planned:
        raise InputError(
          f"{path}: two outputs of this run get this name ({planned[key]} and {source}); "
          "rename one of the inputs"
        )
      planned[key] = source
  for out in outputs:
    _check_existing(out, overwrite)
  parents = [os.path.dirname(os.path.abspath(p)) for p in planned]
  parents += [os.path.abspath(o.path) for o in outputs if o.kind == "dir"]
  for parent in dict.fromkeys(parents):
    check_writable_dir(parent)


def check_writable_dir(directory: str) -> None:
  """InputError unless files can be created in `directory` (or, while it does not exist yet, in its
  nearest existing ancestor): a probe file is written and removed; nothing else is created."""
  existing = os.path.abspath(directory)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise InputError(f"{directory}: cannot write output there ({existing} is not a directory)")
  try:
    fd, probe = tempfile.mkstemp(dir=existing, prefix=".tmp-probe-")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise InputError(
      f"{directory}: cannot write output there ({e.strerror or type(e).__name__})"
    ) from None


def claim_directory(path: str, names, replace: bool = False) -> None:
  """Just before writing `names` into the directory output `path` (checked by `check_outputs`):
  creates it and records the names in its MARKER, with those of earlier runs. replace=True (a
  frames directory, which is one clip) first removes the files of earlier runs not in `names`."""
  names = list(dict.fromkeys(names))
  os.makedirs(path, exist_ok=True)
  earlier = _marker_names(path) or set()
  if replace:
    for name in sorted(earlier - set(names)):
      target = os.path.join(path, name)
      if os.path.isfile(target) and not os.path.islink(target):
        os.unlink(target)
    earlier = set()
  record = {"written_by": "sk-jax", "files": sorted(earlier | set(names))}
  fd, tmp = tempfile.mkstemp(dir=path, prefix=".tmp-")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(record, f, indent=1)
      f.write("\n")
    os.replace(tmp, os.path.join(path, MARKER))
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def sha256_file(path: str) -> str:
  """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
