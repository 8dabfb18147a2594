"""PyTorch state dict -> NNX parameters: one rename-and-transpose rule set for every tower.

NNX modules in this project name their attributes after the PyTorch state-dict keys, so a
key such as `down_blocks.0.resnets.1.conv1.weight` becomes the path
`('down_blocks', 0, 'resnets', 1, 'conv1', 'kernel')`. What is left per model is a short
regex rename table for the few places where the layouts differ, and an ignore list for
source tensors that are deliberately unused (buffers, heads we do not run).

Layout rules, applied by the kind of the target leaf:
  * `kernel`: Linear (out, in) -> (in, out); ConvNd (out, in, *k) -> (*k, in, out).
  * `scale` (LayerNorm / GroupNorm weight), `embedding` (Embedding weight), `bias` and any
    raw parameter: copied as they are.
  * After the transpose, a target whose shape differs only by size-1 axes is reshaped
    (e.g. a Conv3d (O, I, 3, 1, 1) into a temporal conv kernel (3, I, O)).

Target modules are built by tracing only (`vdit_jax.abstract_build.trace`,
`build_with_weights`): the random initialisation of a 1.4 B-parameter UNet is never computed,
only the converted weights are materialised.
"""

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdit_jax import abstract_build, errors

Path = abstract_build.Path

# Torch leaf name -> NNX leaf names it may land on, in order of preference.
_LEAF_NAMES = {"weight": ("kernel", "scale", "embedding", "weight")}


class ConversionError(errors.UserError, ValueError):
  """A source state dict does not match the target module exactly."""

  def __init__(self, what: str, missing=(), unexpected=(), mismatched=(), duplicated=()):
    self.missing, self.unexpected = sorted(missing), sorted(unexpected)
    self.mismatched, self.duplicated = sorted(mismatched), sorted(duplicated)
    lines = [f"{what}: the source weights do not match the target model."]
    for title, items in (("missing (target parameters no source key fills)", self.missing),
                         ("unexpected (source keys with no target)", self.unexpected),
                         ("shape mismatch (source key: source shape -> target shape)",
                          self.mismatched),
                         ("assigned more than once", self.duplicated)):
      if items:
        lines.append(f"  {len(items)} {title}:")
        lines.extend(f"    {item}" for item in items[:50])
        if len(items) > 50:
          lines.append(f"    ... and {len(items) - 50} more")
    super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class Rules:
  """How one tower's PyTorch keys map onto its NNX module.

  renames: (regex, replacement) pairs applied with `re.sub`, in order, to every source key
    before it is split into a path.
  ignore: regexes (full match) of source keys that are deliberately not converted.
  """
  renames: Sequence[tuple[str, str]] = ()
  ignore: Sequence[str] = ()

  def rename(self, key: str) -> str | None:
    """The dotted target key for a source key, or None when the key is ignored."""
    if any(re.fullmatch(pattern, key) for pattern in self.ignore):
      return None
    for pattern, replacement in self.renames:
      key = re.sub(pattern, replacement, key)
    return key


def key_to_path(key: str) -> Path:
  """'a.0.b.weight' -> ('a', 0, 'b', 'weight')."""
  return tuple(int(part) if part.isdigit() else part for part in key.split("."))


def path_to_key(path: Path) -> str:
  return ".".join(str(part) for part in path)




def _to_target_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and value.ndim >= 2:
    return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
  return value


def _fit(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
  if value.shape == shape:
    return value
  squeeze = lambda s: tuple(d for d in s if d != 1)
  if squeeze(value.shape) == squeeze(shape):
    return value.reshape(shape)
  return None


def convert_tensors(
    items: Iterable[tuple[str, np.ndarray]],
    targets: Mapping[Path, jax.ShapeDtypeStruct],
    rules: Rules,
    *,
    what: str = "model",
    dtype=None,
    on_tensor: Callable[[Path, np.ndarray], None] | None = None,
) -> dict[Path, np.ndarray]:
  """Renames, transposes and checks a stream of source tensors against the target paths.

  Args:
    items: (torch key, numpy array) pairs; consumed one at a time, so a streaming reader
      keeps at most one source tensor alive besides the output.
    targets: target path -> shape/dtype, from `abstract_build.param_shapes`.
    rules: the tower's rename table and ignore list.
    what: the name used in error messages.
    dtype: cast every converted array to this dtype (None keeps the target's dtype).
    on_tensor: when given, each converted array is handed to it instead of being kept,
      and the returned dict is empty (for writers that stream to disk).

  Returns:
    target path -> converted numpy array.

  Raises:
    ConversionError: listing every missing, unexpected, mis-shaped and duplicated key.
  """
  out, seen = {}, {}
  unexpected, mismatched, duplicated = [], [], []
  for key, value in items:
    renamed = rules.rename(key)
    if renamed is None:
      continue
    src_path = key_to_path(renamed)
    candidates = [src_path[:-1] + (name,) for name in _LEAF_NAMES.get(src_path[-1], ())]
    path = next((p for p in candidates + [src_path] if p in targets), None)
    if path is None:
      unexpected.append(key)
      continue
    if path in seen:
      duplicated.append(f"{path_to_key(path)} (from {seen[path]} and {key})")
      continue
    seen[path] = key
    fitted = _fit(_to_target_layout(path[-1], np.asarray(value)), targets[path].shape)
    if fitted is None:
      mismatched.append(f"{key}: {tuple(np.shape(value))} -> {targets[path].shape}")
      continue
    value = fitted.astype(dtype or targets[path].dtype, copy=False)
    if on_tensor is None:
      out[path] = value
    else:
      on_tensor(path, value)
  missing = [path_to_key(p) for p in targets if p not in seen]
  if missing or unexpected or mismatched or duplicated:
    raise ConversionError(what, missing, unexpected, mismatched, duplicated)
  return out


def load_params(module: nnx.Module, params: Mapping[Path, np.ndarray]) -> nnx.Module:
  """Writes converted arrays into a concrete module's nnx.Params, in place; returns it."""
  flat = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
  for path, value in params.items():
    flat[tuple(path)][...] = jax.numpy.asarray(value)
  return module






def build_with_weights(make: Callable[[], nnx.Module], items: Iterable[tuple[str, np.ndarray]],
                       rules: Rules, what: str) -> nnx.Module:
  """The module `make()` builds, with every nnx.Param taken from the converted `items`."""
  graphdef, params, rest = abstract_build.trace(make)
  flat = nnx.to_flat_state(params)
  arrays = convert_tensors(items, {tuple(p): v.get_value() for p, v in flat}, rules, what=what)
  params = [(path, var.replace(jnp.asarray(arrays.pop(tuple(path))))) for path, var in flat]
  return nnx.merge(graphdef, nnx.from_flat_state(params), rest)
