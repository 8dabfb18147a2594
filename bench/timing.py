"""Timing helpers shared by the JAX-vs-PyTorch benches."""

import statistics
import time


def alternating_medians(fns, steps: int, rounds: int) -> list[float]:
  """Median seconds of each fn over `rounds` blocks of steps, blocks alternating between fns.

  Blocks, not single steps, alternate: XLA's and torch's worker threads spin for a while
  after each call and would slow the other down; alternating blocks spreads drifting load
  from other processes over both.
  """
  times = [[] for _ in fns]
  for _ in range(rounds):
    for fn, fn_times in zip(fns, times):
      fn()
      for _ in range(steps):
        start = time.perf_counter()
        fn()
        fn_times.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]
