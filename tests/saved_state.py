"""What a training run wrote, read back as numpy for the training tests: checkpoint items,
flattened by key path, and their comparison."""

import jax
import numpy as np
import orbax.checkpoint as ocp

from vdit_jax import checkpoints


def flat(state) -> dict[str, np.ndarray]:
  """A pytree as {key path: numpy array}."""
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}


def saved(workdir: str, step: int, items=("params", "opt", "train")
          ) -> dict[str, dict[str, np.ndarray]]:
  """Array items of a checkpoint as numpy: params as stored, the others as saved."""
  manager = checkpoints.reader(checkpoints.checkpoint_dir(workdir))
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          manager.item_metadata(step)["params"])
  args = dict(params=ocp.args.PyTreeRestore(restore_args=as_numpy),
              opt=ocp.args.StandardRestore(), train=ocp.args.StandardRestore())
  restored = manager.restore(step, args=ocp.args.Composite(**{k: args[k] for k in items}))
  manager.close()
  return {item: flat(restored[item]) for item in items}


def assert_equal(a, b, rtol, atol=None):
  """The same items, keys and values (to rtol, atol: default rtol) of two `saved` results."""
  for item in a:
    assert a[item].keys() == b[item].keys(), item
    for key in a[item]:
      np.testing.assert_allclose(a[item][key], b[item][key], rtol=rtol,
                                 atol=rtol if atol is None else atol, err_msg=f"{item}{key}")
