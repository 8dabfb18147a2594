"""The project's error base for bad input, and how command-line entry points report it.

A missing file, a corrupt record, a mismatched checkpoint or a bad flag is something the user
fixes, not a bug: every error type that means this derives from `UserError`, and every
command (`data_pipelines.build`, `data_pipelines.synthetic`, `vdit_jax.convert`,
`vdit_jax.main`) prints its message as one block, with no traceback unless asked to, and
exits non-zero. Anything else is a bug and keeps its traceback.
"""

import sys
from typing import Callable


class UserError(Exception):
  """Bad input a user can fix; the message names what and where (and the fix, if known)."""


def run_command(command: Callable[[], int | None], *, verbose: bool = False) -> int:
  """Runs `command`; a UserError becomes `error: <message>` on stderr and exit status 1.

  Args:
    command: the command's body; its return value (None meaning 0) is the exit status.
    verbose: re-raise UserErrors too, for their traceback (the commands' --verbose flag).
  """
  try:
    return command() or 0
  except UserError as e:
    if verbose:
      raise
    print(f"error: {e}", file=sys.stderr)
    return 1


class ConfigError(UserError, ValueError):
  """A config value that cannot be honoured; the message names the field (config.data.x)."""
