"""What the command modules share: the help formatter and help texts used by several commands."""

from __future__ import annotations

import argparse

OVERWRITE_HELP = "replace an existing sk-jax checkpoint directory (anything else is never replaced)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """argparse's defaults in the help, except where the help states its default itself or there is
  none to state (None, False)."""

  def _get_help_string(self, action):
    help_text = action.help or ""
    none = action.default is None or action.default is False
    if "default" in help_text or none or action.default == argparse.SUPPRESS:
      return help_text
    return super()._get_help_string(action)
