"""Where training metrics go: WORKDIR/metrics.jsonl, TensorBoard, and one console line.

Only process 0 writes (`MetricsWriter(..., active=jax.process_index() == 0)`). Each logged
step is one JSON object `{"step": n, name: value, ...}` appended to metrics.jsonl and one
scalar per name in the TensorBoard event files of WORKDIR/tensorboard (tensorboardX, no
TensorFlow). The console shows one progress line, rewritten in place on a terminal; into a
file or pipe it is printed at most every CONSOLE_EVERY_SECONDS, so logs stay short.
"""

import json
import math
import os
import sys
import time
from typing import Mapping, Sequence, TextIO

import numpy as np
import tensorboardX

CONSOLE_EVERY_SECONDS = 60.0


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class MetricsWriter:
  """Writes the metrics of logged steps.

  Args:
    workdir: the run directory.
    total_steps: the step training ends at (for the progress and ETA).
    console_keys: the metrics the console line shows, those present, in this order.
    active: whether this process writes (process 0).
    stream: the console (sys.stdout).
  """

  def __init__(self, workdir: str, *, total_steps: int, console_keys: Sequence[str],
               active: bool, stream: TextIO | None = None):
    self._total, self._keys, self._active = total_steps, tuple(console_keys), active
    self._stream = sys.stdout if stream is None else stream
    self._tty = self._stream.isatty()
    self._last_print = -math.inf
    if active:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Logs the scalars of `step`; `steps_per_s` in them gives the console's rate and ETA."""
    if not self._active:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)
    self._console(step, values)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """(h, w, 3) uint8 images of `step` (mask overlays of the evaluators) to TensorBoard."""
    if not self._active:
      return
    for name, image in images.items():
      self._tb.add_image(name, image, step, dataformats="HWC")

  def _console(self, step: int, values: Mapping[str, float]) -> None:
    now = time.monotonic()
    last = step >= self._total
    if not (self._tty or last or now - self._last_print >= CONSOLE_EVERY_SECONDS):
      return
    self._last_print = now
    rate = values.get("steps_per_s", math.nan)
    eta = (self._total - step) / rate if rate > 0 else math.nan
    shown = " ".join(f"{k} {values[k]:.4g}" for k in self._keys if k in values)
    line = (f"step {step}/{self._total} ({100 * step / max(self._total, 1):.1f}%) | "
            f"{rate:.3g} steps/s | ETA {_duration(eta)} | {shown}")
    if self._tty:
      self._stream.write("\r\033[K" + line + ("\n" if last else ""))
    else:
      self._stream.write(line + "\n")
    self._stream.flush()

  def note(self, message: str) -> None:
    """A line of its own on the console (from process 0), after the progress line."""
    if self._active:
      self._stream.write(("\n" if self._tty else "") + message + "\n")
      self._stream.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()
