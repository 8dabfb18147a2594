"""The one in-memory form every raw dataset reader produces and every shard holds.

A reader turns its dataset's on-disk layout into `VideoRecord`s, one video (or, for
RefCOCO, one image) at a time; `records.py` serialises a `VideoRecord` into one
`tf.train.Example` and back. Frames and masks stay encoded (JPEG / PNG bytes) until the
training pipeline decodes the few frames a clip needs.

Masks are id maps: a single-channel PNG per annotated frame whose pixel value is the object
id (0 = background), so one mask serves every expression of the video. Each `Expression`
names the object ids it refers to. Where objects of one frame overlap (A2D instances can),
the frame carries several id maps, each free of overlap: `mask_frames` then names the frame
more than once, and an object's mask is the union over that frame's maps.
"""

import dataclasses


def anchor_key(exp_id: str) -> str:
  """The `VideoRecord.meta` key naming the annotated frame an expression is anchored on
  (A2D, JHMDB: the one frame of the sample that has ground truth)."""
  return f"frame/{exp_id}"


@dataclasses.dataclass(frozen=True)
class Expression:
  """One referring expression.

  exp_id: the dataset's expression id (Ref-YTVOS "0", "1", ...; A2D/JHMDB/RefCOCO a stable
    string id of the sample or sentence).
  text: the expression as written (not lower-cased, not stripped of punctuation).
  obj_ids: the ids, in the video's id-map masks, of the object(s) it refers to.
  """
  exp_id: str
  text: str
  obj_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One video with its frames, id-map masks and expressions.

  dataset: "ytvos", "davis", "a2d", "jhmdb" or "refcoco" (refcoco / refcoco+ / refcocog
    share one reader; `split` then reads e.g. "refcoco+/train").
  split: the split the record belongs to ("train", "valid", ...).
  video_id: the dataset's video id (RefCOCO: the image id as a string).
  frame_names: every frame of the video in temporal order (YTVOS "00000", A2D "00001").
  frames: the encoded bytes of each frame, aligned with frame_names.
  frame_format: "jpeg" or "png".
  height, width: the frame size in pixels (all frames of a video share it).
  mask_frames: the names of the annotated frames (a subset of frame_names, in temporal
    order; a frame is repeated when it carries several id maps).
  masks: the id-map PNG bytes of each annotated frame, aligned with mask_frames.
  expressions: the video's referring expressions.
  meta: small dataset-specific extras kept as strings (e.g. the YTVOS category of each
    object, the A2D instance -> COCO image id); values must be str.
  """
  dataset: str
  split: str
  video_id: str
  frame_names: tuple[str, ...]
  frames: tuple[bytes, ...]
  frame_format: str
  height: int
  width: int
  mask_frames: tuple[str, ...]
  masks: tuple[bytes, ...]
  expressions: tuple[Expression, ...]
  meta: dict[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if len(self.frame_names) != len(self.frames):
      raise ValueError(f"{self.dataset}/{self.video_id}: {len(self.frame_names)} frame names "
                       f"but {len(self.frames)} frames")
    if len(self.mask_frames) != len(self.masks):
      raise ValueError(f"{self.dataset}/{self.video_id}: {len(self.mask_frames)} mask frame "
                       f"names but {len(self.masks)} masks")
    unknown = set(self.mask_frames) - set(self.frame_names)
    if unknown:
      raise ValueError(f"{self.dataset}/{self.video_id}: masks for frames that are not in the "
                       f"video: {sorted(unknown)[:5]}")
    if self.frame_format not in ("jpeg", "png"):
      raise ValueError(f"{self.dataset}/{self.video_id}: unknown frame format "
                       f"{self.frame_format!r}")
