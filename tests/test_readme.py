"""README's Quick start is what CI runs: the same install and test commands, word for word."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    return f.read()


def _quick_start_commands():
  section = _read("README.md").split("## Quick start", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S)
  return [line.strip() for block in blocks for line in block.splitlines()
          if line.strip() and not line.strip().startswith("#")]


def test_quick_start_has_exactly_two_commands():
  assert len(_quick_start_commands()) == 2


def test_ci_runs_the_readme_install_and_test_commands():
  ci = _read(".ci/run")
  test_command = _quick_start_commands()[1]
  steps = [step.strip() for step in test_command.split("&&")]
  install = next(step for step in steps if step.startswith("pip install"))
  pytest_step = next(step for step in steps if "pytest" in step)
  assert re.search(rf"^{re.escape(install)}$", ci, flags=re.M)
  assert re.search(rf"^{re.escape(pytest_step)}$", ci, flags=re.M)
