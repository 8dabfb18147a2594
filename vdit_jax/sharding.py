"""The device mesh, and where every parameter and batch goes on it, from config data.

`config.mesh` names the axes and their sizes; `config.sharding` (configs/common.py
`sharding()`) holds the rules: (regex on the parameter path, spec), first match wins, for
every parameter of the model, frozen towers and trainable parts alike (big_vision's
`sharding.py` habit of regex rules). `Rules` turns them into `NamedSharding`s for a whole
state, for one parameter (the callable `pretrained.load_backbone` takes, so converted
weights are read straight into their shards) and for the batch.
"""

import math
import re
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vdit_jax import errors

Path = tuple[str | int, ...]
_LARGEST = "largest:"


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None
              ) -> jax.sharding.Mesh:
  """The mesh of `config.mesh` over `devices` (all of them by default), axis types Auto.

  `jax.make_mesh` orders the devices by the physical topology (the last axis the fastest
  links) and, with several processes, keeps each process's devices together. Auto axes let
  XLA propagate shardings through the model (GSPMD); `jax.make_mesh`'s own default is
  Explicit.

  Raises:
    errors.ConfigError: sizes that do not multiply to the device count, or more than one -1.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  fixed = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or len(set(names)) != len(names) or any(s == 0 or s < -1
                                                                  for s in sizes):
    raise errors.ConfigError(f"config.mesh {tuple(axes)}: give distinct axis names, positive "
                             "sizes and at most one -1")
  if -1 in sizes:
    if len(devices) % fixed:
      raise errors.ConfigError(f"config.mesh {tuple(axes)}: {len(devices)} devices are not a "
                               f"multiple of {fixed}")
    sizes[sizes.index(-1)] = len(devices) // fixed
  if math.prod(sizes) != len(devices):
    raise errors.ConfigError(f"config.mesh {tuple(axes)} has {math.prod(sizes)} devices, "
                             f"but there are {len(devices)}")
  return jax.make_mesh(tuple(sizes), names, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def path_name(path: Path) -> str:
  """('towers', 'unet', 0, 'kernel') -> 'towers/unet/0/kernel', what rules match."""
  return "/".join(str(part) for part in path)


class Rules:
  """`config.sharding` on a mesh: a sharding for every parameter path and for batches.

  Args:
    mesh: the device mesh.
    rules: ordered (regex, spec) pairs, configs/common.py `sharding()`.
    min_shard_bytes: "largest:" rules replicate parameters smaller than this.
    batch_axes: the mesh axes a batch's leading dimension is split over.
  """

  def __init__(self, mesh: jax.sharding.Mesh, *, rules: Sequence[tuple[str, Any]],
               min_shard_bytes: int, batch_axes: Sequence[str]):
    self.mesh = mesh
    self._rules = [(re.compile(pattern), pattern, spec) for pattern, spec in rules]
    self._min_shard_bytes = min_shard_bytes
    unknown = [a for a in batch_axes if a not in mesh.shape]
    if unknown:
      raise errors.ConfigError(f"config.sharding.batch_axes names {unknown}, which are not "
                               f"axes of the mesh {dict(mesh.shape)}")
    self.batch = NamedSharding(mesh, PartitionSpec(tuple(batch_axes)))
    self.replicated = NamedSharding(mesh, PartitionSpec())

  @property
  def batch_divisor(self) -> int:
    """How many ways a batch is split: its size must be a multiple of this."""
    return math.prod(self.mesh.shape[a] for a in self.batch.spec[0])

  def spec(self, path: Path, x: jax.ShapeDtypeStruct) -> PartitionSpec:
    """The PartitionSpec of the parameter at `path` with x's shape and dtype.

    Raises:
      errors.ConfigError: no rule matches, or the matching spec does not fit the shape.
    """
    name = path_name(path)
    for regex, pattern, spec in self._rules:
      if regex.fullmatch(name):
        return self._resolve(name, pattern, spec, x)
    raise errors.ConfigError(f"no config.sharding.rules entry matches the parameter {name}")

  def _resolve(self, name: str, pattern: str, spec, x: jax.ShapeDtypeStruct) -> PartitionSpec:
    if isinstance(spec, str):
      if not spec.startswith(_LARGEST) or spec[len(_LARGEST):] not in self.mesh.shape:
        raise errors.ConfigError(f"config.sharding.rules ({pattern!r}, {spec!r}): a string spec "
                                 f"is 'largest:AXIS' with AXIS one of {tuple(self.mesh.shape)}")
      return self._largest(name, spec[len(_LARGEST):], x)
    entries = tuple(spec)
    if len(entries) > len(x.shape):
      raise errors.ConfigError(f"config.sharding.rules ({pattern!r}, {spec!r}) has more entries "
                               f"than {name} has dimensions {tuple(x.shape)}")
    for dim, entry in zip(x.shape, entries):
      axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
      unknown = [a for a in axes if a not in self.mesh.shape]
      ways = math.prod(self.mesh.shape[a] for a in axes if a in self.mesh.shape)
      if unknown or dim % ways:
        raise errors.ConfigError(
            f"config.sharding.rules ({pattern!r}, {spec!r}) does not fit {name} "
            f"{tuple(x.shape)} on the mesh {dict(self.mesh.shape)}")
    return PartitionSpec(*entries)

  def _largest(self, name: str, axis: str, x: jax.ShapeDtypeStruct) -> PartitionSpec:
    """Shards the largest dimension `axis` divides (the last of equal ones)."""
    shape = tuple(x.shape)
    if math.prod(shape) * np.dtype(x.dtype).itemsize < self._min_shard_bytes:
      return PartitionSpec()
    ways = self.mesh.shape[axis]
    candidates = [i for i in range(len(shape)) if shape[i] % ways == 0]
    if not candidates:
      logging.info("%s %s: no dimension divisible by %s=%d, replicated", name, shape, axis,
                   ways)
      return PartitionSpec()
    dim = max(candidates, key=lambda i: (shape[i], i))
    return PartitionSpec(*(None,) * dim, axis)

  def __call__(self, path: Path, x: jax.ShapeDtypeStruct) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(path, x))

  def within(self, *prefix: str) -> Callable[[Path, jax.ShapeDtypeStruct], NamedSharding]:
    """The placement of a sub-module found at `prefix` in the model, e.g.
    `rules.within("towers")` for `pretrained.load_backbone(shardings=...)`, whose paths
    start at the tower name."""
    return lambda path, x: self(tuple(prefix) + tuple(path), x)

  def tree(self, state: nnx.State, prefix: Path = ()) -> nnx.State:
    """A State like `state` (arrays or ShapeDtypeStructs) holding each leaf's NamedSharding:
    parameters by the rules, every other variable (RNG keys and counts) replicated."""
    def place(path, variable):
      if isinstance(variable, nnx.Param):
        return variable.replace(self(tuple(prefix) + tuple(path), variable.get_value()))
      return variable.replace(self.replicated)
    return nnx.from_flat_state([(path, place(path, var))
                                for path, var in nnx.to_flat_state(state)])

  def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's part of the global batch -> global arrays split over `batch_axes`.

    Every process passes its own rows (the pipeline's `batch_size // process_count`, in
    process order); string entries (captions, ids) stay on the host and are left out.
    """
    return {key: jax.make_array_from_process_local_data(self.batch, value)
            for key, value in batch.items() if np.asarray(value).dtype.kind in "biuf"}


def put(tree, shardings):
  """`tree`'s arrays placed in `shardings` (a matching tree); arrays already there are kept.

  Unlike `jax.device_put`, this also works with several processes for arrays that live on
  one process's devices (every process holds the same values): each process fills its own
  shards from its host copy.
  """
  def one(x, sharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    is_key = isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    host = np.asarray(jax.random.key_data(x) if is_key else x)
    placed = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(x)) if is_key else placed
  return jax.tree.map(one, tree, shardings)


def per_device_bytes(tree) -> dict[jax.Device, int]:
  """Bytes of `tree`'s arrays held by each (addressable) device."""
  held: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held
