"""Writing a directory all at once: a hidden sibling is filled, then renamed into place.

Used by every command that writes a tree users later read (dataset shards, converted
weights), so an interrupted or failed run leaves the previous output untouched and no
partial one.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from vdit_jax import errors


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def replace_dir(new: str, out: str) -> None:
  """Moves directory `new` to `out`; a previous `out` is removed only once `new` is in place."""
  if not os.path.exists(out):
    os.rename(new, out)
    return
  trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
  os.rename(out, os.path.join(trash, "old"))
  os.rename(new, out)
  shutil.rmtree(trash)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, *, overwrite: bool = False,
                     flag: str = "--overwrite") -> Iterator[str]:
  """Yields a hidden directory beside `out` that becomes `out` when the block succeeds.

  Args:
    out: the directory to produce; its parent is created.
    overwrite: replace an existing `out` (only once the new one is complete).
    flag: the command-line flag that sets `overwrite`, quoted in the error.

  Raises:
    errors.UserError: `out` exists and `overwrite` is False (checked before any work).
  """
  out = os.path.abspath(os.fspath(out))
  if os.path.exists(out) and not overwrite:
    raise errors.UserError(f"{out} already exists; pass {flag} to replace it")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=os.path.dirname(out))
  try:
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0o700 would otherwise become `out`'s mode
    yield tmp
    replace_dir(tmp, out)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
