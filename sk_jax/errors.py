"""The exceptions that the command line turns into one line on stderr and an exit code."""


class InputError(ValueError):
  """Bad user input: a file, checkpoint or config that cannot be used. The message names it. Exit 2."""


class ArgumentError(InputError):
  """A bad argument of a library function, named by its parameter: str(e) is "PARAM DETAIL"
  ("alpha must be in [0, 1], got 2"). The CLI names its flag instead (`flag_message`)."""

  def __init__(self, param: str, detail: str):
    super().__init__(f"{param}{detail}")
    self.param, self.detail = param, detail

  def flag_message(self, flags=None) -> str:
    """The message with the command-line flag for the parameter: flags maps parameter names to
    flags where they differ from --param-name."""
    flag = (flags or {}).get(self.param, "--" + self.param.replace("_", "-"))
    return f"{flag}{self.detail}"


class ParityError(RuntimeError):
  """JAX and PyTorch disagree beyond the documented tolerance (`sk-jax parity`). Exit 1."""


class NonFiniteError(RuntimeError):
  """Training stopped after too many non-finite updates in a row; names the last good checkpoint. Exit 1."""


class SaveError(RuntimeError):
  """A checkpoint or export could not be written (e.g. no space left on the device); names the path.
  The previous checkpoints are intact. Exit 1."""


# EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"): distinct from
# 0 (done), 1 (failed), 2 (bad input) and 130 (a second Ctrl-C), so a job scheduler can requeue.
EXIT_PREEMPTED = 75


class Preempted(RuntimeError):
  """Training stopped on SIGTERM, Ctrl-C or a preemption notice after saving a checkpoint at the
  step it had reached; the same command resumes there. Exit EXIT_PREEMPTED (75)."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def is_disk_full(e: BaseException) -> bool:
  """True when `e` or anything in its cause/context chain is 'no space left on device' (ENOSPC/EDQUOT)."""
  import errno

  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left" in str(e) or "Disk quota exceeded" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def one_line(e: BaseException) -> str:
  """The whole message of `e` on one line (the CLI's error line), or its type's name."""
  return " ".join(str(e).split()) or type(e).__name__


def describe(e: BaseException, limit: int = 200) -> str:
  """ "Type: first line of the message" (at most `limit` characters of it), for an error that
  names its cause in parentheses."""
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__
