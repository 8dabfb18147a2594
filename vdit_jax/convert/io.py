"""Streaming readers for PyTorch checkpoints: one tensor at a time, as numpy arrays.

`iter_tensors` reads a weights file, a sharded index or a model directory laid out by
`save_pretrained` (diffusers or transformers) and yields `(key, array)` pairs, so a
converter holds at most one source tensor besides its output.

Safetensors files are parsed here rather than through `safetensors.safe_open`: safe_open
memory-maps the whole file, and every page it touches stays in the resident set until the
file is closed, which would double peak memory when converting a 5.6 GB UNet. Reading each
tensor with a plain `readinto` keeps only the tensor itself resident, handles bfloat16 and
float8 through ml_dtypes, and lets a truncated file be named before any data is read.

`.bin` / `.pth` files go through `torch.load(weights_only=True, mmap=True)` (`load_torch`):
nothing is unpickled beyond tensors, plain containers and the classes a caller allows by name,
and storages are paged in as they are read.
The same resident-set growth applies to torch's file mapping, so on Linux the pages of each
storage are handed back (madvise MADV_PAGEOUT) once the tensor is copied out.
"""

import ctypes
import ctypes.util
import functools
import json
import math
import mmap
import os
import re
import struct
import sys
from typing import Any, Iterator, Sequence

import ml_dtypes
import numpy as np

from vdit_jax import errors

# Safetensors dtype tag -> numpy dtype (the format is little-endian throughout).
_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"), "BOOL": np.dtype(bool),
}
# A header larger than this is a corrupt length field, not a real header.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
# Weight-file stems written by diffusers and transformers, in order of preference.
_STEMS = ("model", "diffusion_pytorch_model", "pytorch_model")
# Formats in order of preference: (single-file suffixes, index format name).
_FORMATS = ((("safetensors",), "safetensors"), (("bin", "pth", "pt"), "bin"))
# madvise advice from Linux <sys/mman.h>; kernels before 5.4 answer EINVAL, changing nothing.
_MADV_PAGEOUT = 21
_SHARD_NAME = re.compile(r".*-\d+-of-\d+\.(safetensors|bin)$")

Tensors = Iterator[tuple[str, np.ndarray]]


class WeightFileError(errors.UserError, ValueError):
  """A weights file or directory is missing, ambiguous, truncated or corrupt."""


def read_config(directory: str | os.PathLike, name: str = "config.json") -> dict:
  """The JSON object in `directory/name` (a model's `config.json` by default)."""
  path = os.path.join(directory, name)
  if not os.path.isdir(directory):
    raise WeightFileError(f"{directory}: no such directory")
  if not os.path.isfile(path):
    raise WeightFileError(f"{path}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise WeightFileError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(config, dict):
    raise WeightFileError(f"{path}: expected a JSON object, found {type(config).__name__}")
  return config


def iter_tensors(path: str | os.PathLike, *, variant: str | None = None) -> Tensors:
  """Yields (key, array) for every tensor of a weights file, index file or model directory.

  Args:
    path: a `.safetensors` / `.bin` / `.pth` file, a `*.index*.json` shard index, or a
      directory holding one of them (safetensors is preferred when both formats exist).
    variant: a diffusers/transformers weights variant such as "fp16", selecting
      `diffusion_pytorch_model.fp16.safetensors`; None selects the file without a variant.

  Yields:
    (state-dict key, numpy array in the stored dtype; bfloat16 as ml_dtypes.bfloat16).

  Raises:
    WeightFileError: naming the file that is missing, ambiguous, truncated or corrupt.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = find_weights(path, variant=variant)
  elif not os.path.isfile(path):
    raise WeightFileError(f"{path}: no such file or directory")
  if path.endswith(".json"):
    yield from _iter_index(path)
  elif path.endswith(".safetensors"):
    yield from _iter_safetensors(path)
  else:
    yield from _iter_torch(path)


def read_model(src) -> tuple[dict[str, Any], Tensors, str]:
  """(config dict, (key, array) stream, name for messages) of a live torch model or a directory.

  `src` is a diffusers / transformers model (it has `config` and `state_dict()`) or a
  directory written by their `save_pretrained`. Floating tensors of a live model arrive as
  float32 numpy arrays.
  """
  if isinstance(src, (str, os.PathLike)):
    return read_config(src), iter_tensors(src), os.fspath(src)
  if not (hasattr(src, "config") and hasattr(src, "state_dict")):
    raise TypeError(f"expected a diffusers / transformers model or a model directory, "
                    f"got {type(src).__name__}")
  config = src.config.to_dict() if hasattr(src.config, "to_dict") else dict(src.config)

  def items():
    for key, tensor in src.state_dict().items():
      tensor = tensor.detach().cpu()
      yield key, (tensor.float() if tensor.is_floating_point() else tensor).numpy()

  return config, items(), type(src).__name__


def find_weights(directory: str, *, variant: str | None = None) -> str:
  """The weights file (or shard index) `iter_tensors` reads from a model directory."""
  if not os.path.isdir(directory):
    raise WeightFileError(f"{directory}: no such directory")
  tag = f".{variant}" if variant else ""
  for suffixes, index_format in _FORMATS:
    for stem in _STEMS:
      names = [f"{stem}.{index_format}.index{tag}.json"]
      names += [f"{stem}{tag}.{suffix}" for suffix in suffixes]
      for name in names:
        if os.path.isfile(os.path.join(directory, name)):
          return os.path.join(directory, name)
  # Non-standard single files (e.g. a lone `weights.pth`) are accepted when unambiguous.
  others = sorted(name for name in os.listdir(directory)
                  if re.fullmatch(r"[^.]+" + re.escape(tag) + r"\.(safetensors|bin|pth|pt)", name)
                  and not _SHARD_NAME.fullmatch(name))
  if len(others) == 1:
    return os.path.join(directory, others[0])
  found = ", ".join(sorted(os.listdir(directory))) or "nothing"
  what = f"no {variant} variant weights file" if variant else "no weights file"
  if others:
    what = f"several candidate weights files ({', '.join(others)}); pass one explicitly"
  raise WeightFileError(f"{directory}: {what} (found: {found})")


def _iter_index(path: str) -> Tensors:
  """Tensors of a sharded checkpoint, shard by shard, in the order the index names them."""
  index = read_config(os.path.dirname(path) or ".", os.path.basename(path))
  weight_map = index.get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise WeightFileError(f"{path}: shard index has no 'weight_map'")
  shards: dict[str, set[str]] = {}
  for key, shard in weight_map.items():
    shards.setdefault(shard, set()).add(key)
  directory = os.path.dirname(path)
  missing = [s for s in shards if not os.path.isfile(os.path.join(directory, s))]
  if missing:
    raise WeightFileError(f"{path}: the index names missing shard files: {', '.join(missing)}")
  for shard, keys in shards.items():
    shard_path = os.path.join(directory, shard)
    for key, value in iter_tensors(shard_path):
      if key in keys:
        keys.discard(key)
        yield key, value
    if keys:
      raise WeightFileError(f"{shard_path}: lacks keys the index {path} assigns to it: "
                            f"{', '.join(sorted(keys)[:10])}")


def _read_safetensors_header(f, path: str, size: int) -> tuple[int, dict]:
  """(offset of the data section, tensor entries) of an open safetensors file."""
  if size < 8:
    raise WeightFileError(f"{path}: truncated safetensors file ({size} bytes, no header)")
  (header_len,) = struct.unpack("<Q", f.read(8))
  if header_len > min(size - 8, _MAX_HEADER_BYTES):
    raise WeightFileError(f"{path}: truncated or corrupt safetensors file: the header claims "
                          f"{header_len} bytes, the file has {size - 8} after the length")
  try:
    header = json.loads(f.read(header_len))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WeightFileError(f"{path}: corrupt safetensors header ({e})") from e
  if not isinstance(header, dict):
    raise WeightFileError(f"{path}: corrupt safetensors header (not a JSON object)")
  header.pop("__metadata__", None)
  return 8 + header_len, header


def _iter_safetensors(path: str) -> Tensors:
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    data_start, header = _read_safetensors_header(f, path, size)
    entries = []
    for key, entry in header.items():
      try:
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
      except (KeyError, TypeError, ValueError) as e:
        raise WeightFileError(f"{path}: corrupt header entry for {key!r}: {entry!r}") from e
      if end - begin != math.prod(shape) * dtype.itemsize or begin < 0:
        raise WeightFileError(f"{path}: header entry for {key!r} has {end - begin} bytes for "
                              f"shape {shape} of {entry['dtype']}")
      if data_start + end > size:
        raise WeightFileError(f"{path}: truncated safetensors file: {key!r} ends at byte "
                              f"{data_start + end}, the file has {size} bytes")
      entries.append((begin, key, dtype, shape))
    # Reading in file order keeps the access sequential on slow disks.
    for begin, key, dtype, shape in sorted(entries, key=lambda e: e[0]):
      array = np.empty(shape, dtype)
      f.seek(data_start + begin)
      if f.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
        raise WeightFileError(f"{path}: truncated while reading {key!r}")
      yield key, array


def load_torch(path: str, *, allowed_globals: Sequence[type] = ()) -> Any:
  """A torch.save'd object, loaded with weights_only=True and memory-mapped.

  Nothing beyond tensors, plain containers and scalars (torch's weights_only allow-list) and
  the classes in `allowed_globals` is unpickled: the pickle's other globals are listed from
  the file, without running it, and refused by name.

  Raises:
    WeightFileError: naming the file and the refused globals, or why it cannot be read.
  """
  import torch  # Only needed for PyTorch pickles; safetensors reads need no torch.

  allowed = {f"{c.__module__}.{c.__qualname__}" for c in allowed_globals}
  try:
    found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
  except Exception as e:  # Not a zip archive, no data.pkl, a corrupt pickle stream, ...
    raise WeightFileError(f"{path}: cannot be read as a PyTorch zip checkpoint "
                          f"({type(e).__name__}: {e})") from e
  refused = sorted(set(found) - allowed)
  if refused:
    extra = "".join(f", {name}" for name in sorted(allowed))
    raise WeightFileError(
        f"{path}: refused, nothing was unpickled: its pickle calls or builds "
        f"{', '.join(refused)}; loading with weights_only=True accepts tensors, plain "
        f"containers and scalars{extra} only")
  try:
    with torch.serialization.safe_globals(list(allowed_globals)):
      return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
    raise WeightFileError(f"{path}: cannot be read as a PyTorch zip checkpoint with "
                          f"weights_only=True and mmap=True ({type(e).__name__}: {e})") from e


def tensor_array(tensor) -> np.ndarray:
  """A numpy copy of a (memory-mapped) CPU tensor; its file pages are handed back."""
  array = _torch_to_numpy(tensor)
  _release_pages(tensor)
  return array


def _iter_torch(path: str) -> Tensors:
  """Tensors of a torch.save'd state dict, loaded with weights_only and memory-mapped."""
  import torch

  state = load_torch(path)
  if not isinstance(state, dict):
    raise WeightFileError(f"{path}: expected a state dict, found {type(state).__name__}")
  for key in list(state):
    tensor = state.pop(key)
    if not isinstance(tensor, torch.Tensor):
      raise WeightFileError(f"{path}: {key!r} is a {type(tensor).__name__}, not a tensor")
    yield key, tensor_array(tensor)


def _release_pages(tensor) -> None:
  """Asks the kernel to reclaim the pages of a tensor's storage (Linux >= 5.4; else a no-op).

  MADV_PAGEOUT keeps the contents (unlike MADV_DONTNEED, which zeroes anonymous memory):
  the file-mapped pages are dropped and read back from the file should another tensor
  sharing the storage need them.
  """
  if not sys.platform.startswith("linux"):
    return
  storage = tensor.untyped_storage()
  start = storage.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
  length = storage.data_ptr() + storage.nbytes() - start
  if length > 0:
    _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_PAGEOUT)


@functools.cache
def _libc():
  libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
  libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
  return libc


def _torch_to_numpy(tensor) -> np.ndarray:
  """A numpy copy (detached from the memory map) of a CPU tensor, bfloat16 included."""
  import torch

  views = {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
           torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
           torch.float8_e5m2: (torch.uint8, ml_dtypes.float8_e5m2)}
  tensor = tensor.detach()
  if tensor.dtype in views:
    storage_dtype, numpy_dtype = views[tensor.dtype]
    return np.array(tensor.view(storage_dtype).numpy()).view(numpy_dtype)
  return np.array(tensor.numpy())
