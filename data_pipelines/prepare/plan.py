"""What a preparation derives, and how it is checked against the disk and written.

A dataset's preparation reads the files its owners release and returns a `Plan`: the files
(and folder links) the reader needs, each with the value derived for it, plus every
inconsistency it met in the release. `apply` then checks each output that already exists
(one a user downloaded from MTTR or made with ReferFormer's converter) against the derived
value, and writes the missing ones. It never overwrites a file.

Inconsistencies (annotator lines that do not line up, rows naming unknown videos, an existing
file that disagrees) stop the preparation before anything is written, unless
`skip_mismatched`: then the inconsistent items are left out of what is written, existing
files are kept as they are, and the report counts what was skipped.
"""

import dataclasses
import json
import os
from typing import Any, Callable

from vdit_jax import errors

_EXAMPLES = 5


class PrepareError(errors.UserError):
  """The release is inconsistent (or incomplete) and strict preparation stopped."""


@dataclasses.dataclass(frozen=True)
class Output:
  """One file or folder link the reader needs.

  path: where it goes (absolute, or relative to the working directory).
  summary: what it holds, for the report ("3,800 samples of 737 videos").
  value: the JSON value of a file output, written with `json.dumps` defaults (the
    separators MTTR and ReferFormer write with), no trailing newline.
  link: for a folder link, the folder it points to.
  """
  path: str
  summary: str
  value: Any = None
  link: str | None = None


@dataclasses.dataclass
class Plan:
  """A dataset's derivation: what was read, noted, found inconsistent, and is to be written."""
  dataset: str
  read: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  problems: list[str] = dataclasses.field(default_factory=list)
  outputs: list[Output] = dataclasses.field(default_factory=list)


def apply(plan: Plan, *, skip_mismatched: bool, echo: Callable[[str], None] = print
          ) -> dict[str, str]:
  """Checks the plan's existing outputs, then writes the missing ones.

  Returns:
    {output path: "wrote" | "kept" | "differs"} ("differs": an existing file left as it is).

  Raises:
    PrepareError: the plan has problems (or an existing output disagrees) and not
      `skip_mismatched`; nothing is written then.
  """
  statuses, problems = {}, list(plan.problems)
  for output in plan.outputs:
    difference = _difference(output)
    if difference is None:
      statuses[output.path] = "wrote"
    elif difference:
      statuses[output.path] = "differs"
      problems.append(f"{output.path} exists and differs from what the release gives: "
                      f"{difference}")
    else:
      statuses[output.path] = "kept"
  for line in plan.read:
    echo(f"{plan.dataset}: read {line}")
  for line in plan.notes:
    echo(f"{plan.dataset}: {line}")
  if problems and not skip_mismatched:
    raise PrepareError(
        f"{plan.dataset}: {len(problems)} inconsistencies; nothing was written:\n  "
        + "\n  ".join(problems)
        + "\nFix the files, or pass --skip_mismatched to leave these items out (an existing "
          "file that differs is then kept as it is).")
  for problem in problems:
    echo(f"{plan.dataset}: skipped: {problem}")
  if problems:
    echo(f"{plan.dataset}: skipped {len(problems)} inconsistent items (--skip_mismatched)")
  for output in plan.outputs:
    status = statuses[output.path]
    if status == "wrote":
      _write(output)
      echo(f"{plan.dataset}: wrote {output.path}: {output.summary}")
    elif status == "kept":
      echo(f"{plan.dataset}: kept {output.path}: it agrees with the release ({output.summary})")
  return statuses


def _difference(output: Output) -> str | None:
  """None if the output is missing, "" if it exists and agrees, else how it differs."""
  if not os.path.lexists(output.path):
    return None
  if output.link is not None:
    return _link_difference(output.path, output.link)
  try:
    with open(output.path, "rb") as f:
      existing = json.load(f)
  except (OSError, ValueError) as e:
    return f"cannot be read as JSON ({e})"
  return ", ".join(first_differences(existing, output.value))


def _link_difference(path: str, target: str) -> str:
  """A folder at `path` agrees if it is `target` (a link to it) or holds the same file names."""
  if os.path.realpath(path) == os.path.realpath(target):
    return ""
  if not os.path.isdir(path):
    return f"it is not a folder and does not point to {target}"
  here, there = set(os.listdir(path)), set(os.listdir(target))
  if here == there:
    return ""
  return (f"its files differ from {target}'s ({len(here - there)} only here, "
          f"{len(there - here)} only there)")


def first_differences(existing: Any, derived: Any, where: str = "") -> list[str]:
  """Up to a few JSON paths at which two values differ, with what each side holds there."""
  if isinstance(existing, dict) and isinstance(derived, dict):
    found = []
    for key in list(existing) + [k for k in derived if k not in existing]:
      if key not in derived or key not in existing:
        side = "file" if key in existing else "release"
        found.append(f"{where}/{key} only in the {side}")
      else:
        found += first_differences(existing[key], derived[key], f"{where}/{key}")
      if len(found) >= _EXAMPLES:
        break
    return found[:_EXAMPLES]
  if isinstance(existing, list) and isinstance(derived, list):
    found = [] if len(existing) == len(derived) else [
        f"{where or '/'} has {len(existing)} entries in the file, {len(derived)} from the "
        f"release"]
    for index, (a, b) in enumerate(zip(existing, derived)):
      found += first_differences(a, b, f"{where}[{index}]")
      if len(found) >= _EXAMPLES:
        break
    return found[:_EXAMPLES]
  if existing != derived or type(existing) is not type(derived):
    return [f"{where or '/'}: {existing!r} in the file, {derived!r} from the release"]
  return []


def _write(output: Output) -> None:
  """Writes a file (or makes a relative folder link) through a temporary name and a rename."""
  directory = os.path.dirname(os.path.abspath(output.path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(output.path)}.partial-{os.getpid()}")
  if output.link is not None:
    os.symlink(os.path.relpath(output.link, directory), tmp)
  else:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(json.dumps(output.value))
  os.replace(tmp, output.path)
