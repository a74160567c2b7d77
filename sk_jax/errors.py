"""The exceptions that the command line turns into one line on stderr and an exit code."""


class InputError(ValueError):
  """Bad user input: a file, checkpoint or config that cannot be used. The message names it. Exit 2."""


class ParityError(RuntimeError):
  """JAX and PyTorch disagree beyond the documented tolerance (`sk-jax parity`). Exit 1."""


class NonFiniteError(RuntimeError):
  """Training stopped after too many non-finite updates in a row; names the last good checkpoint. Exit 1."""
