"""Stopping cleanly when the job is told to stop (SIGTERM from a scheduler, Ctrl-C).

One process: SIGTERM and SIGINT set a flag; the train loop finishes its step, saves a
checkpoint and returns. A second SIGINT interrupts at once. Several processes must stop at
the same step, so there only JAX's preemption sync point decides (Orbax's
`reached_preemption`, which every process calls each step; jax.distributed catches SIGTERM
for it), and signals are left to JAX.
"""

import signal
import types

from absl import logging

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Context manager that records a stop signal in a single-process run.

  Args:
    enabled: install the handlers (False with several processes).
  """

  def __init__(self, enabled: bool):
    self._enabled = enabled
    self._previous: dict[int, object] = {}
    self.signal: int | None = None

  def __enter__(self) -> "StopRequest":
    if self._enabled:
      self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if self.signal == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signum
    logging.warning("%s received: stopping after this step with a checkpoint",
                    signal.Signals(signum).name)

  @property
  def requested(self) -> bool:
    return self.signal is not None
