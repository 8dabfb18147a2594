"""Reading and checking the files of raw datasets, shared by the dataset readers.

Every reader validates what it reads at conversion time, so that a shard never holds a
frame or mask that fails to decode: frames are decoded once (JPEGs at 1/8 scale, see
`check_frame`) and dropped, masks are decoded to id maps. Every failure raises
`RawDataError` naming the file (or the video and the annotation file) at fault.

`load_pickle` reads the few pickles a release ships (REFER's `refs(<split_by>).p`) with an
unpickler that builds only plain values, never arbitrary objects.

Id-map masks are single-channel PNGs whose pixel value is the object id: 'L' PNGs, or
palette ('P') PNGs whose palette index is the id. `decode_id_map` reads both; never
`.convert("L")` a palette PNG, which would map indices through the palette colours.
"""

import functools
import io
import json
import os
import pickle
from typing import Any, Callable

import numpy as np
from PIL import Image

from vdit_jax import errors

# The image formats a frame may have, as PIL names them, per `VideoRecord.frame_format`.
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}
_ID_MAP_MODES = ("L", "P")


class RawDataError(errors.UserError, ValueError):
  """A raw dataset file is missing, unreadable or inconsistent with its annotations."""


def read_bytes(path: str) -> bytes:
  """Returns the contents of `path`; a missing file raises RawDataError naming it."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise RawDataError(f"missing file {path}") from None


def load_json(path: str) -> Any:
  """Parses the JSON file at `path`, cached while the file is unchanged.

  Workers read one video at a time, and the annotation file of a split (hundreds of MB for
  RefCOCO) must not be parsed again for each video. The result is shared: do not mutate it.
  """
  return _load_json(path, *_version(path))


def load_json_index(path: str, build: Callable[[Any, str], Any]) -> Any:
  """Returns `build(parsed JSON, path)`, cached while the file is unchanged.

  `build` turns a split's annotation list into a per-video index once per process, rather
  than scanning the whole list for every video. It must be a module-level function.
  """
  return _build_index(path, *_version(path), build)


def load_index(paths: tuple[str, ...], build: Callable[..., Any], *args: Any) -> Any:
  """Returns `build(*paths, *args)`, cached while none of the files changes.

  For an index built from several files (REFER's refs pickle and instances.json). `build`
  must be a module-level function and `args` hashable.
  """
  return _build_multi_index(paths, tuple(_version(path) for path in paths), build, args)


def load_pickle(path: str) -> Any:
  """Unpickles a file of plain values (lists, dicts, tuples, sets, str, bytes, numbers).

  Any other object in the pickle is refused before it is built, so a crafted file cannot run
  code. Python 2 pickles load too: their byte strings are decoded as UTF-8. Cached while the
  file is unchanged; do not mutate the result.
  """
  return _load_pickle(path, *_version(path))


def _version(path: str) -> tuple[int, int]:
  """(mtime_ns, size): cache keys under which a rewritten file is parsed again."""
  try:
    stat = os.stat(path)
  except FileNotFoundError:
    raise RawDataError(f"missing file {path}") from None
  return stat.st_mtime_ns, stat.st_size


# Few entries: a build reads one split, and a parsed RefCOCO file takes GBs of memory.
@functools.lru_cache(maxsize=4)
def _build_index(path: str, mtime_ns: int, size: int, build: Callable[[Any, str], Any]) -> Any:
  return build(_load_json(path, mtime_ns, size), path)


@functools.lru_cache(maxsize=4)
def _build_multi_index(paths: tuple[str, ...], versions: tuple, build: Callable[..., Any],
                       args: tuple) -> Any:
  del versions  # Cache keys only.
  return build(*paths, *args)


class _PlainUnpickler(pickle.Unpickler):
  """Builds containers and scalars only: every global a pickle names is refused.

  Protocol 0-2 pickles of sets name `builtins.set` / `frozenset` (Python 2's `__builtin__`,
  which fix_imports maps to `builtins`); nothing else is looked up.
  """
  _ALLOWED = {("builtins", "set"): set, ("builtins", "frozenset"): frozenset}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[module, name]
    raise pickle.UnpicklingError(f"refusing to build {module}.{name}: only plain lists, "
                                 f"dicts, strings and numbers are read")


@functools.lru_cache(maxsize=2)
def _load_pickle(path: str, mtime_ns: int, size: int) -> Any:
  del mtime_ns, size  # Cache keys only.
  try:
    with open(path, "rb") as f:
      return _PlainUnpickler(f, fix_imports=True, encoding="utf-8").load()
  except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, TypeError,
          IndexError, KeyError) as e:
    raise RawDataError(f"{path}: cannot read the pickle: {e}") from None


@functools.lru_cache(maxsize=4)
def _load_json(path: str, mtime_ns: int, size: int) -> Any:
  del mtime_ns, size  # Cache keys only.
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RawDataError(f"{path}: not valid JSON: {e}") from None


def check_frame(data: bytes, path: str, frame_format: str) -> tuple[int, int]:
  """Decodes an encoded frame and returns its (height, width).

  A JPEG is decoded at 1/8 scale (libjpeg's DCT scaling): every coefficient is still read,
  so truncated or broken entropy data fails as in a full decode, at under half the cost.
  Raises RawDataError naming `path` if the bytes are not a complete image of `frame_format`
  ("jpeg" or "png").
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      found = image.format
      size = image.height, image.width
      if found == "JPEG":
        image.draft(None, (1, 1))
      image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise RawDataError(f"{path}: corrupt {frame_format} image: {e}") from None
  if found != _PIL_FORMATS[frame_format]:
    raise RawDataError(f"{path}: expected a {frame_format} image, found {found}")
  return size


def decode_id_map(data: bytes, path: str = "<bytes>") -> np.ndarray:
  """Decodes an id-map PNG ('L', or 'P' read as palette indices) to a (H, W) uint8 array."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      found = image.format, image.mode
      ids = np.asarray(image)
  except (OSError, SyntaxError, ValueError) as e:
    raise RawDataError(f"{path}: corrupt PNG mask: {e}") from None
  if found[0] != "PNG" or found[1] not in _ID_MAP_MODES:
    raise RawDataError(f"{path}: an id-map mask must be an 'L' or palette PNG, found "
                       f"{found[0]} in mode {found[1]}")
  return ids


def encode_id_map(ids: np.ndarray) -> bytes:
  """Encodes a (H, W) uint8 id map as an 'L' PNG."""
  if ids.ndim != 2 or ids.dtype != np.uint8:
    raise ValueError(f"an id map must be a 2-D uint8 array, got {ids.dtype} {ids.shape}")
  buffer = io.BytesIO()
  Image.fromarray(ids, mode="L").save(buffer, format="PNG")
  return buffer.getvalue()


def check_size(size: tuple[int, int], expected: tuple[int, int], path: str) -> None:
  """Raises RawDataError naming `path` unless `size` (H, W) equals the video's `expected`."""
  if tuple(size) != tuple(expected):
    raise RawDataError(f"{path}: size (H, W) {tuple(size)} differs from the video's "
                       f"{tuple(expected)}")


def check_text(text: Any, where: str) -> str:
  """Returns an expression's text; a missing, non-string or blank one raises RawDataError."""
  if not isinstance(text, str) or not text.strip():
    raise RawDataError(f"{where}: empty expression {text!r}")
  return text


def read_frames(paths: list[str], frame_format: str,
                where: str) -> tuple[tuple[bytes, ...], int, int]:
  """Reads and checks the frame files of the video `where` names.

  Returns:
    (frames, height, width): the encoded bytes of each file and the size they all share.
  """
  if not paths:
    raise RawDataError(f"{where}: the video has no frames")
  frames = []
  size = None
  for path in paths:
    data = read_bytes(path)
    frame_size = check_frame(data, path, frame_format)
    if size is None:
      size = frame_size
    check_size(frame_size, size, path)
    frames.append(data)
  return tuple(frames), size[0], size[1]


def check_split(dataset: str, split: str, splits: tuple[str, ...]) -> None:
  """Raises ValueError naming the dataset's known splits unless `split` is one of them."""
  if split not in splits:
    raise ValueError(f"{dataset}: unknown split {split!r}; known: {splits}")
