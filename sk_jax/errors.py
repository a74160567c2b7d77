"""The one exception that the command line turns into a one-line message and exit code 2."""


class InputError(ValueError):
  """Bad user input: a file, checkpoint or config that cannot be used. The message names it."""
