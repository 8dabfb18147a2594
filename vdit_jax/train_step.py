"""The update step: one pure function of (train state, frozen towers, batch), jitted over
the mesh with explicit shardings and the train state donated.

The loss sees the global batch (the jit spans every device and process), so sums inside it,
such as the number of valid frames that normalises VD-IT's losses (`losses.num_boxes`), are
global without any collective written by hand. Gradients are taken with respect to the
trainable parameters only: the frozen towers enter as plain inputs, and XLA computes no
gradient for them.

Randomness: step i uses `key = fold_in(state["rng"], i)`, split in two. The first reseeds the
model's `dropout` RNG streams (nnx.Dropout in the towers and the head), the second is the
`rng` argument of the loss. Nothing else is random, so a resumed run repeats the same steps.
"""

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vdit_jax import optim, train_state

# loss_fn(model, batch, rng) -> (scalar loss, {name: scalar}) on the global batch.
LossFn = Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array],
                  tuple[jax.Array, Mapping[str, jax.Array]]]

# Metrics the step adds to the loss's own.
STEP_METRICS = ("loss", "grad_norm", "update_norm", "param_norm", "lr", "nonfinite",
                "nonfinite_total", "nonfinite_in_row")


def _where(ok: jax.Array, new, old):
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def update(state: dict[str, Any], frozen: nnx.State, rest: nnx.State,
           batch: Mapping[str, jax.Array], *, graphdef, loss_fn: LossFn,
           tx: optax.GradientTransformation, schedule: optim.Schedule
           ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One training step (the function `make` jits).

  Args:
    state: the train state (vdit_jax.train_state).
    frozen, rest: the model's frozen parameters and other variables (train_state.Parts).
    batch: global arrays.
    graphdef: the model's structure (train_state.Parts).
    loss_fn: see LossFn; its metrics are logged under their own names.
    tx: `optim.AdamW.direction()`.
    schedule: the learning rate of each step.

  Returns:
    The next train state (parameters and optimizer state unchanged when the loss or the
    gradient norm is not finite) and the step's scalar metrics: the loss's terms and
    STEP_METRICS.
  """
  step = state["step"]
  dropout_key, loss_key = jax.random.split(jax.random.fold_in(state["rng"], step))

  def objective(params):
    # copy=True: the module's variables belong to this trace, so dropout may advance them.
    model = nnx.merge(graphdef, params, frozen, rest, copy=True)
    nnx.reseed(model, dropout=dropout_key, policy="match_shape")
    return loss_fn(model, batch, loss_key)

  (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
  clashes = sorted(set(terms) & set(STEP_METRICS))
  if clashes:
    raise ValueError(f"loss_fn metrics {clashes} clash with the train step's own")
  lr = schedule(step)
  direction, opt = tx.update(grads, state["opt"], state["params"])
  updates = jax.tree.map(lambda d: -lr * d, direction)
  params = optax.apply_updates(state["params"], updates)
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  in_row = jnp.where(ok, 0, state["nonfinite_in_row"] + 1)
  new_state = dict(
      params=_where(ok, params, state["params"]), opt=_where(ok, opt, state["opt"]),
      rng=state["rng"], step=step + 1,
      nonfinite_total=state["nonfinite_total"] + (~ok).astype(jnp.int32),
      nonfinite_in_row=in_row)
  metrics = dict(terms, loss=loss, grad_norm=grad_norm, update_norm=optax.tree.norm(updates),
                 param_norm=optax.tree.norm(new_state["params"]), lr=lr,
                 nonfinite=(~ok).astype(jnp.int32),
                 nonfinite_total=new_state["nonfinite_total"], nonfinite_in_row=in_row)
  return new_state, metrics


def make(parts: train_state.Parts, state_shardings: dict[str, Any], rules, *,
         loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optim.Schedule
         ) -> Callable[[dict[str, Any], nnx.State, nnx.State, Mapping[str, jax.Array]],
                       tuple[dict[str, Any], dict[str, jax.Array]]]:
  """`update` jitted: step(state, frozen, rest, batch) -> (state, metrics).

  In: the train state in `state_shardings` (donated), the frozen parameters and the other
  variables in the shardings `rules` gives them, the batch split over the batch axes. Out:
  the state in the same shardings, the metrics replicated.
  """
  step = functools.partial(update, graphdef=parts.graphdef, loss_fn=loss_fn, tx=tx,
                           schedule=schedule)
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(state_shardings, rules.tree(parts.frozen),
                               rules.tree(parts.rest), rules.batch),
                 out_shardings=(state_shardings, rules.replicated))
