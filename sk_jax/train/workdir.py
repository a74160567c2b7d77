"""One trainer per workdir: an exclusive lock on WORKDIR/.lock that holds its owner's PID.

The lock is `fcntl.flock` on an open file, so the kernel drops it when the process ends in
any way (SIGKILL included): a stale lock file never blocks the next run. It is per host;
in a multi-process run only process 0 takes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from sk_jax.errors import InputError

LOCK_FILE = ".lock"


def create(workdir: str) -> None:
  """Makes the workdir (and its parents); a path that is a file, or where nothing can be created
  (/proc/x, no permission), is an InputError naming it."""
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"{workdir}: --workdir exists and is not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, LOCK_FILE)
    os.close(os.open(probe, os.O_RDWR | os.O_CREAT, 0o644))
  except OSError as e:
    raise InputError(
      f"{workdir}: cannot use it as --workdir ({e.strerror or type(e).__name__})"
    ) from None


@contextlib.contextmanager
def lock(workdir: str, enabled: bool = True):
  """Holds WORKDIR/.lock for the duration; another holder -> InputError naming its PID."""
  if not enabled:
    yield
    return
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      raise InputError(
        f"{workdir}: another training run (PID {holder}) is using this workdir "
        f"(it holds {path}); wait for it to end or use another --workdir"
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)  # the file stays: removing it would race with a run starting now
  finally:
    os.close(fd)  # releases the lock
