"""A user's video in and overlay videos out: a file PyAV decodes (mp4, webm, mov, ...) or a
folder of JPEG / PNG frames, read a frame at a time; mp4 (H.264 through PyAV) and GIF
(Pillow) written a frame at a time.

`open_video` checks what it can before any work starts (the path exists, the file decodes
and has a frame, a folder's frames all have one size) and raises `VideoInputError`, naming
the file, for what it cannot use.
"""

import dataclasses
import os
import re
from fractions import Fraction
from typing import Callable, Iterator

import av
import numpy as np
from PIL import Image

from vdit_jax import errors

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
# The frame rate a folder of frames plays at unless --fps says otherwise.
FOLDER_FPS = 10.0
# GIFs are for a quick look: their longer side is scaled down to this.
GIF_MAX_SIDE = 480


class VideoInputError(errors.UserError, ValueError):
  """A video or frames folder that cannot be read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class FrameSource:
  """Frames of one video, read lazily.

  path: the file or folder.
  size: (H, W) of every frame.
  fps: the frame rate of the frames `frames()` yields (after --fps sampling).
  count: how many frames `frames()` yields, None where the container does not say.
  frames: () -> iterator of (name, (H, W, 3) uint8 RGB frame); a name is the frame file's
    stem, or a video frame's index in the file (00000, 00001, ...).
  """
  path: str
  size: tuple[int, int]
  fps: float
  count: int | None
  frames: Callable[[], Iterator[tuple[str, np.ndarray]]]


def open_video(path: str, *, fps: float | None = None, max_frames: int | None = None
               ) -> FrameSource:
  """The frames of a video file or of a folder of JPEG / PNG frames.

  Args:
    path: a file PyAV decodes, or a folder whose .jpg / .jpeg / .png files are the frames
      in natural order of their names (frame2 before frame10).
    fps: a video is sampled at this rate (never above its own); a folder plays at it
      (default FOLDER_FPS).
    max_frames: only the first this many frames (after sampling).

  Raises:
    VideoInputError: naming the file: missing, unreadable, without frames, or a folder
      whose frames differ in size.
  """
  if fps is not None and fps <= 0:
    raise VideoInputError(f"--fps must be positive, got {fps}")
  if max_frames is not None and max_frames < 1:
    raise VideoInputError(f"--max-frames must be at least 1, got {max_frames}")
  if not os.path.exists(path):
    raise VideoInputError(f"{path}: no such file or folder")
  if os.path.isdir(path):
    return _open_folder(path, fps, max_frames)
  return _open_file(path, fps, max_frames)


def _natural_key(name: str) -> list:
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _open_folder(path: str, fps: float | None, max_frames: int | None) -> FrameSource:
  names = sorted((n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS)),
                 key=_natural_key)[:max_frames]
  if not names:
    raise VideoInputError(f"{path}: the folder holds no JPEG or PNG frames")
  sizes = {}
  for name in names:
    try:
      with Image.open(os.path.join(path, name)) as image:
        sizes[name] = (image.height, image.width)
    except (OSError, SyntaxError) as e:
      raise VideoInputError(f"{os.path.join(path, name)}: not a readable image ({e})") from e
    if sizes[name] != sizes[names[0]]:
      h, w = sizes[name]
      raise VideoInputError(
          f"{os.path.join(path, name)} is {h}x{w} (HxW) but {names[0]} is "
          f"{sizes[names[0]][0]}x{sizes[names[0]][1]}: the frames of a folder must have one size")

  def frames():
    for name in names:
      file = os.path.join(path, name)
      try:
        with Image.open(file) as image:
          yield os.path.splitext(name)[0], np.asarray(image.convert("RGB"))
      except (OSError, SyntaxError) as e:
        raise VideoInputError(f"{file}: not a readable image ({e})") from e

  return FrameSource(path, sizes[names[0]], fps or FOLDER_FPS, len(names), frames)


def _sampled(container, stream, fps: float | None, rate: float
             ) -> Iterator[tuple[int, av.VideoFrame]]:
  """(index in the file, frame) of the frames kept at `fps`: the first frame at or after
  each multiple of 1 / fps seconds."""
  step = None if fps is None or fps >= rate else 1.0 / fps
  next_time = 0.0
  for index, frame in enumerate(container.decode(stream)):
    if step is not None:
      time = frame.time if frame.time is not None else index / rate
      if time + 1e-6 < next_time:
        continue
      while next_time <= time + 1e-6:
        next_time += step
    yield index, frame


def _frame_rate(stream) -> float:
  return float(stream.average_rate or stream.guessed_rate or FOLDER_FPS)


def _open_file(path: str, fps: float | None, max_frames: int | None) -> FrameSource:
  def decode() -> Iterator[tuple[str, np.ndarray]]:
    try:
      with av.open(path) as container:
        if not container.streams.video:
          raise VideoInputError(f"{path}: no video frames (the file has no video stream)")
        stream = container.streams.video[0]
        rate = _frame_rate(stream)
        for count, (index, frame) in enumerate(_sampled(container, stream, fps, rate)):
          if max_frames is not None and count >= max_frames:
            return
          yield f"{index:05d}", frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
      raise VideoInputError(f"{path}: cannot be read as a video ({e})") from e

  first = next(decode(), None)
  if first is None:
    raise VideoInputError(f"{path}: no video frames")
  with av.open(path) as container:
    stream = container.streams.video[0]
    rate = _frame_rate(stream)
    # Containers that do not record their frame count say 0; sampling changes it.
    count = (stream.frames or None) if fps is None or fps >= rate else None
  if count is not None and max_frames is not None:
    count = min(count, max_frames)
  return FrameSource(path, first[1].shape[:2], min(fps or rate, rate), count, decode)


class VideoWriter:
  """Frames to an mp4 (H.264, yuv420p, through PyAV) or, for a .gif path, an animated GIF
  (Pillow, each frame's own palette, scaled to GIF_MAX_SIDE). A context manager; frames are
  (H, W, 3) uint8 RGB of one size."""

  def __init__(self, path: str, fps: float):
    self.path, self.fps = path, fps
    self._gif = path.lower().endswith(".gif")
    self._container = self._stream = None
    self._images: list[Image.Image] = []

  def __enter__(self) -> "VideoWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def write(self, frame: np.ndarray) -> None:
    if self._gif:
      image = Image.fromarray(frame)
      scale = GIF_MAX_SIDE / max(image.size)
      if scale < 1:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.BILINEAR)
      self._images.append(image.quantize(colors=255))
      return
    # yuv420p needs even sides: the last row / column is repeated where one is odd.
    h, w = frame.shape[:2]
    frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    if self._container is None:
      self._container = av.open(self.path, "w")
      self._stream = self._container.add_stream(
          "libx264", rate=Fraction(self.fps).limit_denominator(1001))
      self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
      self._stream.pix_fmt = "yuv420p"
    for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
      self._container.mux(packet)

  def close(self) -> None:
    if self._gif and self._images:
      self._images[0].save(self.path, save_all=True, append_images=self._images[1:],
                           duration=round(1000 / self.fps), loop=0)
      self._images = []
    if self._container is not None:
      for packet in self._stream.encode():
        self._container.mux(packet)
      self._container.close()
      self._container = None
