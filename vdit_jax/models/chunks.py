"""Running a function over an array's leading axis a chunk at a time (the CPU paths)."""

import math
from typing import Callable

import jax
import jax.numpy as jnp


def map_in_chunks(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int) -> jax.Array:
  """fn over x's leading axis in even chunks of at most `chunk` rows, under jax.lax.map.

  Args:
    fn: (c, ...) -> (c, ...out), row-wise: row i of the result depends on row i of x only.
    x: (N, ...).
    chunk: the most rows per call; the axis is split evenly and the last chunk zero-padded.

  Returns:
    (N, ...out): the padded rows' results dropped.
  """
  n = x.shape[0]
  num_chunks = math.ceil(n / chunk)
  chunk = math.ceil(n / num_chunks)
  padded = jnp.pad(x, ((0, num_chunks * chunk - n),) + ((0, 0),) * (x.ndim - 1))
  out = jax.lax.map(fn, padded.reshape((num_chunks, chunk) + x.shape[1:]))
  return out.reshape((num_chunks * chunk,) + out.shape[2:])[:n]
