"""What trains and what stays frozen, and the state the train step carries between steps.

A model is an `nnx.Module` whose frozen towers live under its attribute `towers`; every
other parameter trains. `TRAINABLE` and `FROZEN` are that split, the one definition the
train step, the optimizer, the shardings and the checkpoints use. The frozen parameters
get no gradient, no optimizer state and are never checkpointed (the backbone is referenced
instead, `vdit_jax.checkpoints`).

The train state is a dict of global arrays:
  params            nnx.State of the TRAINABLE parameters
  opt               the optimizer state (`optim.AdamW.direction()`), sharded like params
  step              int32, updates done (= batches consumed)
  rng               uint32 (2,), the seed key; step i draws from fold_in(rng, i)
  nonfinite_total   int32, steps whose update was skipped for a NaN / inf loss or gradient
  nonfinite_in_row  int32, such steps in a row up to now
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vdit_jax import sharding

TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("towers")))
FROZEN = nnx.All(nnx.Param, nnx.PathContains("towers"))

# The scalar entries of the train state, all replicated.
COUNTERS = ("step", "nonfinite_total", "nonfinite_in_row")


@dataclasses.dataclass
class Parts:
  """A model taken apart for the train step.

  graphdef: the module structure (static).
  params: the TRAINABLE parameters.
  frozen: the FROZEN parameters (the towers).
  rest: every other variable (RNG keys and counts), read-only in training.
  """
  graphdef: Any
  params: nnx.State
  frozen: nnx.State
  rest: nnx.State


def split(model: nnx.Module) -> Parts:
  return Parts(*nnx.split(model, TRAINABLE, FROZEN, ...))


def init_sharded(make: Callable[[], nnx.Module], rules: sharding.Rules,
                 prefix: sharding.Path = ()) -> nnx.Module:
  """`make()` with every variable created directly in its sharding (one jitted
  initialisation whose outputs are sharded by `rules`), never whole on one device.

  Args:
    make: builds the module (randomly initialised).
    rules: the sharding rules.
    prefix: where the module sits in the model the rules describe (e.g. ("head",)).
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  state = jax.jit(lambda: nnx.state(make()), out_shardings=rules.tree(abstract, prefix))()
  return nnx.merge(graphdef, state)


def shardings(rules: sharding.Rules, tx: optax.GradientTransformation,
              params: nnx.State) -> dict[str, Any]:
  """The NamedShardings of a train state over `params` (arrays or ShapeDtypeStructs): the
  optimizer state's per-parameter entries follow their parameter, the rest is replicated."""
  params_shardings = rules.tree(params)
  opt = jax.eval_shape(tx.init, params)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt, params_shardings,
                                        transform_non_params=lambda _: rules.replicated)
  return dict(params=params_shardings, opt=opt_shardings, rng=rules.replicated,
              **{name: rules.replicated for name in COUNTERS})


def create(params: nnx.State, tx: optax.GradientTransformation, seed: int,
           state_shardings: dict[str, Any]) -> dict[str, Any]:
  """The train state at step 0 around `params`, a fresh optimizer state and the seed key."""
  def init(params):
    return dict(params=params, opt=tx.init(params), rng=jax.random.PRNGKey(seed),
                **{name: jnp.int32(0) for name in COUNTERS})
  return jax.jit(init, out_shardings=state_shardings)(params)


def abstract(state_shardings: dict[str, Any], params: nnx.State,
             tx: optax.GradientTransformation) -> dict[str, Any]:
  """ShapeDtypeStructs with shardings of the train state over `params`: restore targets."""
  shapes = jax.eval_shape(lambda p: create(p, tx, 0, state_shardings), params)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, state_shardings)
