"""Windows grouped into batches of one shape, in steps every process takes together.

Each process reads its own windows (its own shards) and groups them by shape (N, H, W).
Before each step the processes exchange how many windows of which shapes they hold
(`sync`, an all-gather), and all pick the same shape: the one most windows have (ties: the
smallest). Every process then fills its B rows with its windows of that shape and filler
rows (`window_valid` False) for the rest. So every process calls the model equally often,
with the same shapes in the same order, until no process has windows left: collectives
inside the model cannot wait for a process that has stopped.

A process reads windows until one of its groups holds B of them, it holds `max_groups`
shapes, or its windows run out; with bucketed shapes (data_pipelines.eval_windows) the
groups are few and fill quickly, so most batches are full.
"""

from typing import Callable, Iterator

import numpy as np

# Fields that stay on the host, one per window: their shape is the original frame size.
GROUND_TRUTH = ("gt_mask", "gt_masks")
Shape = tuple[int, int, int]
Window = dict[str, np.ndarray]


def window_shape(window: Window) -> Shape:
  """(N, H, W) of a window element (batch axis 1)."""
  return tuple(int(s) for s in window["frames"].shape[1:4])


class ShapeBatches:
  """Iterates (batch, ground truth) pairs; see the module docstring.

  Args:
    windows: this process's window elements (batch axis 1).
    batch_size: B, rows per batch on this process.
    filler: (N, H, W) -> a window element that is no window (eval_windows.EvalWindow.filler).
    sync: (rows, 4) int64 -> (processes, rows, 4), every process's rows in process order
      (jax.experimental.multihost_utils.process_allgather; identity-like on one process).
    max_groups: shapes held at most before a step is taken.

  Yields:
    batch: the stacked fields of B windows (GROUND_TRUTH left out), plus window_valid (B,).
    ground truth: for each real row, its GROUND_TRUTH fields.
  `shapes` lists the shapes of the batches taken, in order of first use.
  """

  def __init__(self, windows: Iterator[Window], batch_size: int,
               filler: Callable[[Shape], Window],
               sync: Callable[[np.ndarray], np.ndarray], max_groups: int = 16):
    if batch_size < 1:
      raise ValueError(f"batch size must be positive, got {batch_size}")
    self._windows, self._batch_size = windows, batch_size
    self._filler, self._sync, self._max_groups = filler, sync, max_groups
    self._groups: dict[Shape, list[Window]] = {}
    self._exhausted = False
    self.shapes: list[Shape] = []

  def _fill(self) -> None:
    while not self._exhausted and len(self._groups) < self._max_groups and all(
        len(g) < self._batch_size for g in self._groups.values()):
      window = next(self._windows, None)
      if window is None:
        self._exhausted = True
      else:
        self._groups.setdefault(window_shape(window), []).append(window)

  def _proposal(self) -> np.ndarray:
    """(max_groups + 1, 4): (N, H, W, windows) per held shape, zero rows, then (0, 0, 0,
    exhausted)."""
    rows = np.zeros((self._max_groups + 1, 4), np.int64)
    for i, (shape, group) in enumerate(sorted(self._groups.items())):
      rows[i] = (*shape, len(group))
    rows[-1, 3] = self._exhausted
    return rows

  def _choose(self, proposals: np.ndarray) -> Shape | None:
    """The shape of the next step, the same on every process; None when all are done."""
    totals: dict[Shape, int] = {}
    for rows in proposals:
      for n, h, w, count in rows[:-1]:
        if count:
          totals[(int(n), int(h), int(w))] = totals.get((int(n), int(h), int(w)), 0) + int(count)
    if not totals:
      if not proposals[:, -1, 3].all():
        raise RuntimeError("a process holds no windows but has not run out of them")
      return None
    return min(totals, key=lambda shape: (-totals[shape], shape))

  def __iter__(self):
    while True:
      self._fill()
      shape = self._choose(np.asarray(self._sync(self._proposal())))
      if shape is None:
        return
      if shape not in self.shapes:
        self.shapes.append(shape)
      group = self._groups.get(shape, [])
      taken, rest = group[:self._batch_size], group[self._batch_size:]
      if rest:
        self._groups[shape] = rest
      else:
        self._groups.pop(shape, None)
      yield self._stack(taken, shape)

  def _stack(self, taken: list[Window], shape: Shape) -> tuple[dict[str, np.ndarray],
                                                               list[dict[str, np.ndarray]]]:
    rows = taken + [self._filler(shape)] * (self._batch_size - len(taken))
    keys = [k for k in rows[0] if k not in GROUND_TRUTH]
    batch = {k: np.concatenate([row[k] for row in rows]) for k in keys}
    batch["window_valid"] = np.arange(self._batch_size) < len(taken)
    return batch, [{k: w[k] for k in GROUND_TRUTH if k in w} for w in taken]
