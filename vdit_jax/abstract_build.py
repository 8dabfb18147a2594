"""Building NNX modules without initialising them.

The frozen towers are built only as shapes (their random initialisers would cost as much as
the weights they are replaced with): the converter fills the traced module with converted
tensors (`vdit_jax.convert.core`), the loader with stored ones (`vdit_jax.pretrained`), and
the planners read parameter counts off it.
"""

from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

Path = tuple[str | int, ...]

def param_shapes(module: nnx.Module) -> dict[Path, jax.ShapeDtypeStruct]:
  """Every nnx.Param of a (possibly abstract, `nnx.eval_shape`-made) module, by path."""
  flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
  return {tuple(path): jax.ShapeDtypeStruct(var.shape, var.dtype) for path, var in flat}


def host_rngs(seed: int = 0) -> nnx.Rngs:
  """nnx.Rngs with `params` and `dropout` streams whose counters are numpy scalars.

  Each `rngs.params()` stores count + 1. Under tracing (nnx.eval_shape, jit) a jax-array
  counter becomes a tracer, and flax's store then reads `tracer.sharding`, whose error
  message walks the whole trace: building the UNet abstractly becomes quadratic (26 s for
  a tiny config). A host counter stays concrete, so abstract builds stay linear.

  Each read of a counter is a copy: flax's `RngStream.__call__` passes the count to
  `random.fold_in` and then increments it in place, and JAX may read a numpy argument
  asynchronously, without copying it (zero-copy on CPU), so a shared buffer made the keys,
  and random towers built from one seed, differ from build to build.
  """
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  for _, stream in nnx.iter_children(rngs):
    stream.count.set_value(np.zeros(stream.count.shape, np.uint32))
    stream.count.set_metadata(on_get_value=lambda _, count: np.array(count))
  return rngs


def trace(make: Callable[[], nnx.Module]) -> tuple[Any, nnx.State, nnx.State]:
  """(graphdef, Params as ShapeDtypeStructs, concrete non-Param state) of `make()`.

  One jitted trace gives all three: the non-Param state (dropout RNG streams) is its only
  output, so XLA drops the random parameter initialisers, and the rest is read off the
  trace (nnx.eval_shape plus a second jit for the RNG state would trace twice).
  """
  traced = {}

  def non_params():
    graphdef, params, rest = nnx.split(make(), nnx.Param, ...)
    traced["graphdef"] = graphdef
    traced["params"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return rest

  rest = jax.jit(non_params)()
  return traced["graphdef"], traced["params"], rest