"""What `python -m vdit_jax.predict` writes, a window of frames at a time:

  OUT/<slug>/<frame>.png   each expression's mask per frame, 0 / 255 grey, at the frame size
  OUT/<slug>.mp4           the frames with the mask in the expression's colour and its text
  OUT/<slug>.gif           the same, smaller, with --gif
  OUT/summary.json         the video, frames, expressions (scores), settings and timings

A slug is the expression in lower case with every run of other characters than letters
and digits made one "-" (at most 60 characters; "expression-<i>" if nothing is left, and
"-2", "-3", ... where two expressions would share one).
"""

import json
import os
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vdit_jax import video_io
from vdit_jax.evaluation import overlay

SUMMARY = "summary.json"
# The expressions' mask colours, in order (repeating after six).
COLOURS = ((255, 40, 40), (40, 160, 255), (60, 210, 60), (255, 190, 0), (200, 70, 255),
           (0, 210, 200))
_SLUG_LENGTH = 60


def slugs(texts: Sequence[str]) -> list[str]:
  """A distinct file-name-safe name per expression (module docstring)."""
  names = []
  for i, text in enumerate(texts, start=1):
    base = re.sub(r"[\W_]+", "-", text.lower()).strip("-")[:_SLUG_LENGTH].strip("-")
    base = base or f"expression-{i}"
    name, n = base, 1
    while name in names:
      n += 1
      name = f"{base}-{n}"
    names.append(name)
  return names


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except (AttributeError, TypeError, OSError):  # Pillow without FreeType: the bitmap font.
    return ImageFont.load_default()


def captioned(frame: np.ndarray, text: str) -> np.ndarray:
  """(H, W, 3) uint8 with `text` in white on a darkened band at the top (cut with "..." to
  the width)."""
  image = Image.fromarray(frame)
  size = max(10, image.height // 22)
  font = _font(size)
  draw = ImageDraw.Draw(image)
  margin = max(2, size // 3)
  shown = text
  while shown and draw.textlength(shown, font=font) > image.width - 2 * margin:
    shown = shown[:-4] + "..." if len(shown) > 4 else ""
  band = size + 2 * margin
  out = np.asarray(image).copy()
  out[:band] = (out[:band] * 0.45).astype(np.uint8)
  image = Image.fromarray(out)
  ImageDraw.Draw(image).text((margin, margin), shown, fill=(255, 255, 255), font=font)
  return np.asarray(image)


class OutputWriter:
  """Writes masks and overlays as windows of results come (`add`), the summary at `close`.

  Args:
    out: the output directory (created; files there of the same names are replaced).
    texts: the expressions.
    fps: the overlay videos' frame rate.
    gif: also write GIF overlays.
  """

  def __init__(self, out: str, texts: Sequence[str], *, fps: float, gif: bool):
    self.out, self.texts = out, list(texts)
    self.slugs = slugs(texts)
    os.makedirs(out, exist_ok=True)
    for slug in self.slugs:
      os.makedirs(os.path.join(out, slug), exist_ok=True)
    self._videos = [[video_io.VideoWriter(os.path.join(out, f"{slug}.{ext}"), fps)
                     for ext in (("mp4", "gif") if gif else ("mp4",))] for slug in self.slugs]
    self.frame_names: list[str] = []
    self._scores: list[np.ndarray] = []

  def add(self, names: Sequence[str], frames: np.ndarray, masks: np.ndarray,
          scores: np.ndarray) -> None:
    """Frames (n, H, W, 3) uint8 named `names`, masks (E, n, H, W) bool, scores (E, n)."""
    for e, (slug, text) in enumerate(zip(self.slugs, self.texts)):
      colour = COLOURS[e % len(COLOURS)]
      for name, frame, mask in zip(names, frames, masks[e]):
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            os.path.join(self.out, slug, f"{name}.png"))
        shown = captioned(overlay.mask_overlay(frame, mask, colour), text)
        for writer in self._videos[e]:
          writer.write(shown)
    self.frame_names += list(names)
    self._scores.append(np.asarray(scores, np.float32))

  def close(self, info: dict[str, Any]) -> dict[str, Any]:
    """Finishes the videos and writes OUT/summary.json with `info` added; returns it."""
    for writers in self._videos:
      for writer in writers:
        writer.close()
    scores = np.concatenate(self._scores, axis=1) if self._scores else np.zeros(
        (len(self.texts), 0), np.float32)
    expressions = [{
        "text": text, "slug": slug, "masks": slug + "/",
        "overlays": [os.path.basename(w.path) for w in writers],
        "mean_score": float(s.mean()) if s.size else None,
        "frame_scores": [round(float(x), 6) for x in s],
    } for text, slug, writers, s in zip(self.texts, self.slugs, self._videos, scores)]
    summary = dict(info, frames=len(self.frame_names), frame_names=self.frame_names,
                   expressions=expressions)
    with open(os.path.join(self.out, SUMMARY), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
      f.write("\n")
    return summary
