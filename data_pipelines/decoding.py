"""A record's frames, masks and captions as the pipelines use them.

Frames decode to RGB PIL images (JPEG at a reduced DCT scale when a smaller `draft` size is
enough), which transforms resample without a numpy round trip; masks are the union of the
referred objects' pixels over the record's id maps; captions get the original's clean-up
and then, optionally, a `Tokenize`.
A frame or mask that does not decode, or does not match the record's size, raises
`ClipError` naming the shard, record, video and frame.
"""

import io
from typing import Callable

import numpy as np
from PIL import Image

from data_pipelines import raw
from data_pipelines import raw_io
from data_pipelines import sampling
from vdit_jax import errors


# What the pipelines call on each example's caption (vdit_jax.tokenizers.CaptionTokenizer):
# picklable (grain worker processes), returning arrays of fixed shapes.
Tokenize = Callable[[str], dict[str, np.ndarray]]


class ClipError(errors.UserError, ValueError):
  """A frame or mask of a record that does not decode or does not fit the video."""


def clean_caption(text: str) -> str:
  """The original's caption clean-up: lower case, single spaces."""
  return " ".join(text.lower().split())


def decode_frame(record: raw.VideoRecord, index: int, where: str,
                 draft: tuple[int, int] | None = None) -> Image.Image:
  """Frame `index` as a decoded RGB PIL image (H, W); a JPEG decoded at a reduced scale no
  smaller than `draft` (H, W) if given."""
  name = record.frame_names[index]
  try:
    image = Image.open(io.BytesIO(record.frames[index]))
    size = image.height, image.width
    if draft is not None and image.format == "JPEG":
      image.draft("RGB", draft[::-1])
    frame = image if image.mode == "RGB" else image.convert("RGB")
    frame.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise ClipError(f"{where} ({record.video_id}): frame {name!r} (#{index}) does not decode "
                    f"as {record.frame_format}: {e}") from e
  if size != (record.height, record.width):
    raise ClipError(f"{where} ({record.video_id}): frame {name!r} is {size}, the record says "
                    f"{(record.height, record.width)}")
  return frame


def decode_mask(record: raw.VideoRecord, index: int, obj_ids: tuple[int, ...], where: str,
                out: np.ndarray | None = None) -> np.ndarray:
  """The union of the objects' pixels over the id maps of frame `index`: (H, W) bool,
  written into `out` (zeros) if given."""
  name = record.frame_names[index]
  mask = np.zeros((record.height, record.width), bool) if out is None else out
  for j, mask_name in enumerate(record.mask_frames):
    if mask_name != name:
      continue
    id_map = raw_io.decode_id_map(record.masks[j], f"{where} ({record.video_id}): mask of "
                                  f"frame {name!r} (#{index})")
    if id_map.shape != mask.shape:
      raise ClipError(f"{where} ({record.video_id}): mask of frame {name!r} is "
                      f"{id_map.shape}, frames are {mask.shape}")
    for obj_id in obj_ids:
      mask |= id_map == obj_id
  return mask


def load_masks(sample: sampling.Sample, indices: np.ndarray, where: str
               ) -> tuple[np.ndarray, np.ndarray]:
  """The expression's masks in frames `indices` of a sample's video.

  Returns (T, H, W) bool masks (empty where not annotated) and (T,) bool `annotated`:
  whether each frame has ground truth (a mask entry; for an anchored sample only the
  anchor frame, as in the original's A2D loader).
  """
  record = sample.record
  if sample.anchored:
    annotated = indices == sample.anchor
  else:
    annotated = np.isin(np.asarray(record.frame_names)[indices], record.mask_frames)
  masks = np.zeros((len(indices), record.height, record.width), bool)
  for t in np.flatnonzero(annotated):
    decode_mask(record, indices[t], sample.expression.obj_ids, where, out=masks[t])
  return masks, annotated


def load_frames(record: raw.VideoRecord, indices: np.ndarray, where: str,
                draft: tuple[int, int] | None = None) -> list[Image.Image]:
  """Frames `indices` of a video as T decoded RGB PIL images (h, w); JPEGs decoded at a
  reduced scale no smaller than `draft` (H, W) if given, else (h, w) = (H, W)."""
  return [decode_frame(record, i, where, draft) for i in indices]
