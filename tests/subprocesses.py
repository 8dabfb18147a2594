"""What the tests' subprocesses share: their environment, and a coordinator port for
multi-process JAX runs."""

import os
import socket
import subprocess

import parity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(cache_dir: str, **extra: str) -> dict[str, str]:
  """This environment with the repository importable, a persistent JAX compilation cache in
  `cache_dir` shared by the runs (they compile the same programs) and XLA's cheapest code
  generation (parity.FAST_COMPILE_FLAGS: compiling dominates a few tiny steps), plus
  `extra`."""
  return dict(os.environ, PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
              XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {parity.FAST_COMPILE_FLAGS}",
              **extra)


def free_port() -> int:
  """A free TCP port on localhost."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def outputs(workers: list[subprocess.Popen], timeout: float) -> list[str]:
  """The output of each worker (started with stdout piped, stderr into it), after asserting
  that all exited 0; all are killed if one hangs past `timeout` seconds."""
  try:
    printed = [w.communicate(timeout=timeout)[0] for w in workers]
  finally:
    for w in workers:
      w.kill()
  assert [w.returncode for w in workers] == [0] * len(workers), "\n".join(
      p[-3000:] for p in printed)
  return printed
