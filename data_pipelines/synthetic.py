"""Tiny, deterministic look-alikes of the raw datasets, in their on-disk layouts.

Every video is a scene of up to 3 flat shapes (circle, square, triangle; distinct colours and
shapes within a video) over a textured background:
  object 0 moves horizontally ("the red circle moving to the right");
  object 1 moves vertically in one half of the frame ("the blue square moving up", "the
    blue square on the left") and meets object 0 (their masks overlap) in the middle frame;
  object 2 stays still in the other half ("the green triangle on the right").
The last object of a video with several frames is absent from its last quarter (not drawn;
its masks there are empty). Id maps paint objects in order, later ones on top; A2D instance
masks are whole (amodal) shapes, so they overlap where objects meet.

`write(dataset, root, ...)` writes one layout (ytvos, davis, a2d, jhmdb, refcoco; see each
reader's module docstring). Where a reader's layout is made from a release by a conversion
(ReferFormer's for Ref-DAVIS17 and RefCOCO, MTTR's for A2D-Sentences), the release's files
are written too, in their owners' layout (see data_pipelines/prepare/), both from the scenes.
The same arguments give the same files: byte-identical (an A2D mp4 is lossless, so its
decoded frames are the same even should libx264 code them differently, see `_mp4`).

CLI: python -m data_pipelines.synthetic --dataset NAME --out DIR [--num_videos N]
  [--num_frames T] [--height H] [--width W] [--seed S]
"""

import argparse
import dataclasses
import io
import json
import os
import pickle
import sys

import av
import h5py
import numpy as np
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

from vdit_jax import errors

DATASETS = ("ytvos", "davis", "a2d", "jhmdb", "refcoco")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 190, 60),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 40, 190),
}
SHAPES = ("circle", "square", "triangle")
JPEG_QUALITY = 90
_YTVOS_FRAME_STEP = 5
_VOID = 255
# Palette colour of each id, black for the background; distinct for the few ids used.
_PALETTE = [(i * step) % 256 for i in range(256) for step in (67, 151, 97)]
_MAT_HEADER_TEXT = 116  # Bytes of descriptive text that open a MATLAB v5 file.


class SyntheticError(errors.UserError, ValueError):
  """Arguments the synthetic writers cannot honour."""


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One shape of a scene.

  centres: (T, 2) float (y, x) centre per frame.
  present: (T,) bool, whether the object is drawn in each frame.
  motion: how it moves, as an expression says it ("moving to the right", "staying still").
  side: "left"/"right" when it stays in that half of the frame, else "".
  """
  colour: str
  shape: str
  radius: float
  centres: np.ndarray
  present: np.ndarray
  motion: str
  side: str

  @property
  def name(self) -> str:
    return f"the {self.colour} {self.shape}"

  def expressions(self) -> list[str]:
    """Referring expressions, each naming colour and shape and one of motion or side."""
    texts = [f"{self.name} {self.motion}"]
    if self.side:
      texts.append(f"{self.name} on the {self.side}")
    return texts

  def mask(self, t: int, size: tuple[int, int]) -> np.ndarray:
    """The whole shape in frame t as (H, W) bool (empty when absent)."""
    if not self.present[t]:
      return np.zeros(size, bool)
    y, x = np.mgrid[:size[0], :size[1]].astype(np.float64)
    dy, dx = y - self.centres[t, 0], x - self.centres[t, 1]
    r = self.radius
    if self.shape == "circle":
      return dy**2 + dx**2 <= r**2
    if self.shape == "square":
      return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    return (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)  # Triangle, apex up.


@dataclasses.dataclass(frozen=True)
class Scene:
  """A rendered video: objects, size, and a fixed background (H, W, 3) uint8."""
  objects: tuple[SceneObject, ...]
  size: tuple[int, int]
  background: np.ndarray

  def frame(self, t: int) -> np.ndarray:
    """The RGB frame t as (H, W, 3) uint8."""
    image = self.background.copy()
    for obj in self.objects:
      image[obj.mask(t, self.size)] = COLOURS[obj.colour]
    return image

  def id_map(self, t: int) -> np.ndarray:
    """Object k has id k + 1; later objects cover earlier ones. (H, W) uint8."""
    ids = np.zeros(self.size, np.uint8)
    for k, obj in enumerate(self.objects):
      ids[obj.mask(t, self.size)] = k + 1
    return ids


def make_scene(rng: np.random.Generator, num_objects: int, num_frames: int,
               size: tuple[int, int]) -> Scene:
  """Draws a scene as the module docstring describes."""
  h, w = size
  colours = rng.permutation(list(COLOURS))[:num_objects]
  shapes = rng.permutation(SHAPES)[:num_objects]
  radius = max(2.0, min(h, w) / 8)
  t = np.arange(num_frames, dtype=np.float64)
  meet = num_frames // 2
  span = max(num_frames - 1, 1)
  x_meet = w / 4 if rng.random() < 0.5 else 3 * w / 4
  near_side, far_side = ("left", "right") if x_meet < w / 2 else ("right", "left")
  present = np.ones(num_frames, bool)
  objects = []
  sign = rng.choice([-1, 1])
  objects.append(SceneObject(
      colour=str(colours[0]), shape=str(shapes[0]), radius=radius + 1,
      centres=np.stack([np.full_like(t, h / 2 - radius / 2),
                        x_meet + sign * (w / 3) * (t - meet) / span], axis=1),
      present=present, motion=f"moving to the {'right' if sign > 0 else 'left'}", side=""))
  if num_objects > 1:
    sign = rng.choice([-1, 1])
    objects.append(SceneObject(
        colour=str(colours[1]), shape=str(shapes[1]), radius=radius,
        centres=np.stack([h / 2 + radius / 2 + sign * (h / 3) * (t - meet) / span,
                          np.full_like(t, x_meet)], axis=1),
        present=present, motion=f"moving {'down' if sign > 0 else 'up'}", side=near_side))
  if num_objects > 2:
    objects.append(SceneObject(
        colour=str(colours[2]), shape=str(shapes[2]), radius=radius + 2,
        centres=np.tile([h / 2, w - x_meet], (num_frames, 1)),
        present=present, motion="staying still", side=far_side))
  if num_frames > 1:
    absent = present.copy()
    absent[num_frames - max(1, num_frames // 4):] = False
    objects[-1] = dataclasses.replace(objects[-1], present=absent)
  return Scene(tuple(objects), size, _background(rng, size))


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  """A grey gradient with noise, so that JPEG has texture to code."""
  h, w = size
  base = rng.integers(70, 150, size=3)
  gradient = np.linspace(0, 40, w)[None, :, None] + np.linspace(0, 20, h)[:, None, None]
  noise = rng.normal(0, 6, size=(h, w, 3))
  return np.clip(base + gradient + noise, 0, 255).astype(np.uint8)


def _new_scene(rng: np.random.Generator, num_frames: int, size: tuple[int, int],
               num_objects: int | None = None) -> Scene:
  return make_scene(rng, num_objects or int(rng.integers(2, 4)), num_frames, size)


def _encode(image: np.ndarray, image_format: str) -> bytes:
  buffer = io.BytesIO()
  if image_format == "JPEG":
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
  else:
    Image.fromarray(image).save(buffer, format=image_format)
  return buffer.getvalue()


def _palette_png(ids: np.ndarray) -> bytes:
  """An id map as a palette PNG (palette index = id)."""
  image = Image.fromarray(ids, mode="P")
  image.putpalette(_PALETTE)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def _put(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _put_json(path: str, value) -> None:
  _put(path, json.dumps(value).encode("utf-8"))


def _video_id(rng: np.random.Generator, length: int = 10) -> str:
  return "".join(rng.choice(list("0123456789abcdef"), size=length))


def _write_ytvos(root: str, rng: np.random.Generator, num_videos: int, num_frames: int,
                 size: tuple[int, int]) -> None:
  """Ref-YouTube-VOS: train with masks; valid and test videos in valid/, no masks."""
  meta = {split: {} for split in ("train", "valid", "test")}
  train_objects = {}
  for split in ("train", "valid", "test"):
    for _ in range(num_videos):
      vid = _video_id(rng)
      scene = _new_scene(rng, num_frames, size)
      names = [f"{_YTVOS_FRAME_STEP * t:05d}" for t in range(num_frames)]
      image_dir = os.path.join(root, "valid" if split == "test" else split)
      for t, name in enumerate(names):
        _put(os.path.join(image_dir, "JPEGImages", vid, f"{name}.jpg"),
             _encode(scene.frame(t), "JPEG"))
        if split == "train":
          _put(os.path.join(image_dir, "Annotations", vid, f"{name}.png"),
               _palette_png(scene.id_map(t)))
      texts = [(k + 1, text) for k, obj in enumerate(scene.objects) for text in obj.expressions()]
      expressions = {str(i): {"exp": text} | ({"obj_id": str(k)} if split == "train" else {})
                     for i, (k, text) in enumerate(texts)}
      # Listed out of order: readers must sort the frames.
      meta[split][vid] = {"expressions": expressions,
                          "frames": [names[i] for i in rng.permutation(num_frames)]}
      if split == "train":
        train_objects[vid] = {"objects": {
            str(k + 1): {"category": obj.shape,
                         "frames": [n for t, n in enumerate(names) if obj.present[t]]}
            for k, obj in enumerate(scene.objects)}}
  _put_json(os.path.join(root, "train", "meta.json"), {"videos": train_objects})
  meta_valid = meta["valid"] | meta["test"]
  for split, videos in (("train", meta["train"]), ("valid", meta_valid), ("test", meta["test"])):
    _put_json(os.path.join(root, "meta_expressions", split, "meta_expressions.json"),
              {"videos": videos})


def _davis_texts(obj: SceneObject) -> list[str]:
  """annot1 first-frame, annot1 full-video, annot2 first-frame, annot2 full-video."""
  where = f" on the {obj.side}" if obj.side else ""
  return [f"{obj.name}{where}", f"{obj.name} {obj.motion}", f"a {obj.colour} {obj.shape}{where}",
          f"a {obj.colour} {obj.shape} that is {obj.motion}, déjà vu"]


# The four Ref-DAVIS17 annotator files, in the order of _davis_texts, with their encodings.
_DAVIS_TEXT_FILES = (("Davis17_annot1.txt", "utf-8"), ("Davis17_annot1_full_video.txt", "utf-8"),
                     ("Davis17_annot2.txt", "latin-1"),
                     ("Davis17_annot2_full_video.txt", "latin-1"))


def _with_void(ids: np.ndarray) -> np.ndarray:
  """Marks the one-pixel background ring around objects as void (255), as DAVIS does."""
  objects = ids > 0
  grown = objects.copy()
  grown[1:] |= objects[:-1]
  grown[:-1] |= objects[1:]
  grown[:, 1:] |= objects[:, :-1]
  grown[:, :-1] |= objects[:, 1:]
  return np.where(grown & ~objects, _VOID, ids).astype(np.uint8)


def _write_davis(root: str, rng: np.random.Generator, num_videos: int, num_frames: int,
                 size: tuple[int, int]) -> None:
  """Ref-DAVIS17: the releases (the DAVIS tree in root/DAVIS, the four annotator files in
  root/davis_text_annotations) and ReferFormer's conversion of them in root.

  In the annotator files, a video's objects are listed in a random order, and the
  full-video files put two spaces before the quoted expression (the conversion makes runs of
  spaces one).
  """
  davis = os.path.join(root, "DAVIS")
  semantics = {}
  text_lines = [[] for _ in _DAVIS_TEXT_FILES]
  for split, image_set in (("train", "train"), ("valid", "val")):
    videos, objects = {}, {}
    for index in range(num_videos):
      scene = _new_scene(rng, num_frames, size)
      seq = f"{scene.objects[0].colour}-{scene.objects[0].shape}-{image_set}{index}"
      names = [f"{t:05d}" for t in range(num_frames)]
      for t, name in enumerate(names):
        jpeg, png = _encode(scene.frame(t), "JPEG"), _palette_png(_with_void(scene.id_map(t)))
        _put(os.path.join(root, split, "JPEGImages", seq, f"{name}.jpg"), jpeg)
        _put(os.path.join(root, split, "Annotations", seq, f"{name}.png"), png)
        _put(os.path.join(davis, "JPEGImages", "480p", seq, f"{name}.jpg"), jpeg)
        _put(os.path.join(davis, "Annotations_unsupervised", "480p", seq, f"{name}.png"), png)
      texts = [(k + 1, text) for k, obj in enumerate(scene.objects) for text in _davis_texts(obj)]
      videos[seq] = {"expressions": {str(i): {"exp": text, "obj_id": str(k)}
                                     for i, (k, text) in enumerate(texts)},
                     "frames": names}
      objects[seq] = {"objects": {str(k + 1): {"category": obj.shape}
                                  for k, obj in enumerate(scene.objects)}}
      semantics[seq] = {str(k + 1): obj.shape for k, obj in enumerate(scene.objects)}
      for k in rng.permutation(len(scene.objects)):
        for n, text in enumerate(_davis_texts(scene.objects[k])):
          text_lines[n].append(f"{seq} {k + 1}{'  ' if n % 2 else ' '}\"{text}\"")
    _put_json(os.path.join(root, split, "meta.json"), {"videos": objects})
    _put_json(os.path.join(root, "meta_expressions", split, "meta_expressions.json"),
              {"videos": videos})
    _put(os.path.join(davis, "ImageSets", "2017", f"{image_set}.txt"),
         "".join(f"{seq}\n" for seq in videos).encode("utf-8"))
  _put_json(os.path.join(davis, "davis_semantics.json"), semantics)
  for (name, encoding), lines in zip(_DAVIS_TEXT_FILES, text_lines):
    _put(os.path.join(root, "davis_text_annotations", name),
         "".join(f"{line}\n" for line in lines).encode(encoding))


def _mp4(frames: list[np.ndarray]) -> bytes:
  """Lossless H.264 (libx264 at constant qp 0, yuv420p, 24 fps, one thread).

  At libx264's default rate control (CRF with macroblock-tree, x264 encoder/slicetype.c),
  these tiny clips came out with different bytes, and different decoded frames, in several
  of 60 calls per clip once the process had encoded and decoded other clips; with the
  macroblock-tree off, or at a constant qp, all 160 calls per clip gave the same bytes.
  Lossless also makes the decoded frames the yuv420p frames whatever the encoder decides.
  """
  h, w = frames[0].shape[:2]
  if h % 2 or w % 2:
    raise SyntheticError(f"a2d: H.264 needs an even frame size, got {(h, w)}")
  buffer = io.BytesIO()
  with av.open(buffer, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=24, options={"qp": "0"})
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.codec_context.thread_count = 1
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return buffer.getvalue()


def _a2d_box(mask: np.ndarray) -> list[float]:
  """x1, y1, x2, y2 around a mask with A2D's fractional edges (x2, y2 past the last pixel)."""
  ys, xs = np.nonzero(mask)
  if not len(xs):
    return [0.0, 0.0, 0.0, 0.0]
  return [float(xs.min()) + 0.08, float(ys.min()) - 0.18, float(xs.max()) + 1.0,
          float(ys.max()) + 1.18]


def _a2d_h5(path: str, instance_ids: list[int], masks: list[np.ndarray],
            codes: list[int]) -> None:
  """One annotated frame in A2D-Sentences' MATLAB layout.

  reMask (N, W, H), or (W, H) when N = 1; reBBox (4, N); `instance` (N, 1) and `id` (1, N)
  float64, as MATLAB stores a row vector and a column vector.
  """
  remask = np.stack([m.T for m in masks]).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w", track_order=True) as f:
    f.create_dataset("reMask", data=remask[0] if len(masks) == 1 else remask)
    f.create_dataset("reBBox", data=np.asarray([_a2d_box(m) for m in masks], np.float64).T)
    f.create_dataset("instance", data=np.asarray(instance_ids, np.float64)[:, np.newaxis])
    f.create_dataset("id", data=np.asarray([codes], np.float64))


@dataclasses.dataclass(frozen=True)
class _A2dVideo:
  """One synthetic A2D clip: its scene, instance id and sentence per object, usage (0 train,
  1 test) and annotated frames (0-based)."""
  video_id: str
  scene: Scene
  instance_ids: tuple[int, ...]
  queries: tuple[str, ...]
  usage: int
  annotated: tuple[int, ...]


def _a2d_query(obj: SceneObject, k: int) -> str:
  """A sentence with the release's quirks: a capital, a leading or trailing space, two spaces."""
  text = obj.expressions()[0]
  return (text[0].upper() + text[1:], f" {text}", text.replace(" ", "  ", 1) + " ")[k % 3]


def _write_a2d(root: str, rng: np.random.Generator, num_videos: int, num_frames: int,
               size: tuple[int, int]) -> None:
  """A2D-Sentences: the release (mp4 clips, per-frame .h5 instance masks, videoset.csv,
  a2d_annotation.txt, a2d_missed_videos.txt) and MTTR's files made from it (sample lists,
  test COCO ground truth), each written from the scenes.

  Videos alternate 2 and 3 objects; instance ids are distinct draws from 0..11 that include
  0 (so they have gaps, and "10" sorts before "2"); each instance has one sentence. The first
  train video also has a `1 (copy)` row, and each split one more video that is only listed as
  missed. Two frames are annotated: the meeting frame (instances overlap) and the last one;
  an instance absent from a frame is not in that frame's .h5, and has no sample there.
  """
  videos, missed = [], []
  for usage in (0, 1):
    for index in range(num_videos):
      vid = _video_id(rng, 11)
      # With 2 objects, the last annotated frame holds a single instance, stored (W, H).
      scene = _new_scene(rng, num_frames, size, num_objects=2 + index % 2)
      _put(os.path.join(root, "Release", "CLIPS320", f"{vid}.mp4"),
           _mp4([scene.frame(t) for t in range(num_frames)]))
      others = rng.choice(np.arange(1, 12), size=len(scene.objects) - 1, replace=False)
      instance_ids = tuple(int(i) for i in rng.permutation([0, *others]))
      video = _A2dVideo(vid, scene, instance_ids,
                        tuple(_a2d_query(obj, k) for k, obj in enumerate(scene.objects)),
                        usage, tuple(sorted({num_frames // 2, num_frames - 1})))
      for t in video.annotated:
        present = [k for k, obj in enumerate(scene.objects) if obj.present[t]]
        _a2d_h5(os.path.join(root, "text_annotations", "a2d_annotation_with_instances", vid,
                             f"{t + 1:05d}.h5"),
                [instance_ids[k] for k in present],
                [scene.objects[k].mask(t, size) for k in present],
                [11 + 10 * k for k in present])
      videos.append(video)
    missed.append((_video_id(rng, 11), usage))
  _write_a2d_release(root, videos, missed, num_frames, size)
  _write_a2d_mttr(root, videos, size)


def _a2d_rows(videos: list[_A2dVideo]) -> list[tuple[str, str, str]]:
  """a2d_annotation.txt's rows (video, instance id, query), sorted as the release sorts them."""
  rows = [(v.video_id, str(i), q) for v in videos for i, q in zip(v.instance_ids, v.queries)]
  first_train = next(v for v in videos if v.usage == 0)
  rows.append((first_train.video_id, "1 (copy)", "a sentence copied by mistake"))
  return sorted(rows, key=lambda row: (row[0].encode(), row[1].encode()))


def _write_a2d_release(root: str, videos: list[_A2dVideo], missed: list[tuple[str, int]],
                       num_frames: int, size: tuple[int, int]) -> None:
  """Release/videoset.csv (no header), a2d_annotation.txt, a2d_missed_videos.txt.

  missed: (video id, usage) of the videos without sentences.
  """
  listed = sorted([(v.video_id, len(v.annotated), v.usage) for v in videos]
                  + [(vid, 1, usage) for vid, usage in missed], key=lambda v: v[0].encode())
  _put(os.path.join(root, "Release", "videoset.csv"), "".join(
      f"{vid},11,00:00:00,00:00:01,{size[0]},{size[1]},{num_frames},{annotated},{usage}\n"
      for vid, annotated, usage in listed).encode())
  _put(os.path.join(root, "text_annotations", "a2d_annotation.txt"), "".join(
      f"{vid},{instance},{query}\n"
      for vid, instance, query in [("video_id", "instance_id", "query")] + _a2d_rows(videos)
  ).encode())
  _put(os.path.join(root, "text_annotations", "a2d_missed_videos.txt"),
       "\n".join(sorted(vid for vid, _ in missed)).encode())


def _write_a2d_mttr(root: str, videos: list[_A2dVideo], size: tuple[int, int]) -> None:
  """MTTR's sample lists and test COCO ground truth, from the scenes."""
  by_id = {v.video_id: v for v in videos}
  samples = {0: [], 1: []}
  images, annotations = [], []
  for vid, instance, query in _a2d_rows(videos):
    if not instance.isdigit():
      continue
    video = by_id[vid]
    obj = video.scene.objects[video.instance_ids.index(int(instance))]
    for t in video.annotated:
      if not obj.present[t]:
        continue
      samples[video.usage].append([query.lower(), vid, t + 1, int(instance)])
      if video.usage:
        mask = obj.mask(t, size)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x1, y1, x2, y2 = _a2d_box(mask)
        key = f"v_{vid}_f_{t + 1}_i_{instance}"
        images.append({"id": key, "height": size[0], "width": size[1]})
        annotations.append({"id": len(annotations) + 1, "image_id": key, "category_id": 1,
                            "segmentation": {"size": list(rle["size"]),
                                             "counts": rle["counts"].decode("ascii")},
                            "area": float(mask.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "iscrowd": 0})
  for usage, split in ((0, "train"), (1, "test")):
    _put_json(os.path.join(root, f"a2d_sentences_single_frame_{split}_annotations.json"),
              samples[usage])
  _put_json(os.path.join(root, "a2d_sentences_test_annotations_in_coco_format.json"),
            {"categories": [{"id": 1, "name": "dummy_class"}], "images": images,
             "annotations": annotations})


def _mat(variables: dict[str, np.ndarray]) -> bytes:
  """A MATLAB v5 file whose header text, which scipy stamps with the time, is fixed."""
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, variables)
  data = buffer.getvalue()
  return b"MATLAB 5.0 MAT-file, vdit-jax synthetic".ljust(_MAT_HEADER_TEXT) + data[
      _MAT_HEADER_TEXT:]


def _write_jhmdb(root: str, rng: np.random.Generator, num_videos: int, num_frames: int,
                 size: tuple[int, int]) -> None:
  """JHMDB-Sentences: PNG frames, puppet masks of object 0, 3 samples per video.

  The mask has one frame fewer than the video, so video_total_frames = T - 1.
  """
  metadata, annotations = [], ["video_id,query"]
  for index in range(num_videos):
    scene = _new_scene(rng, num_frames, size)
    action = ("walk", "run", "jump")[index % 3]
    vid = f"{scene.objects[0].colour}_{scene.objects[0].shape}_{index}"
    for t in range(num_frames):
      _put(os.path.join(root, "Rename_Images", action, vid, f"{t + 1:05d}.png"),
           _encode(scene.frame(t), "PNG"))
    total = max(1, num_frames - 1)
    part_mask = np.stack([(scene.id_map(t) == 1) for t in range(total)], axis=-1)
    _put(os.path.join(root, "puppet_mask", action, vid, "puppet_mask.mat"),
         _mat({"part_mask": part_mask.astype(np.uint8)}))
    query = scene.objects[0].expressions()[0]
    annotations.append(f"{vid},{query}")
    for t in sorted(rng.choice(total, size=min(3, total), replace=False)):
      metadata.append([vid, f"./jhmdb_sentences/Rename_Images/{action}/{vid}/{t + 1:05d}.png",
                       f"./jhmdb_sentences/puppet_mask/{action}/{vid}/puppet_mask.mat",
                       total, query])
  _put(os.path.join(root, "jhmdb_annotation.txt"), "\n".join(annotations).encode() + b"\n")
  _put_json(os.path.join(root, "jhmdb_sentences_samples_metadata.json"), metadata)


def _polygon(obj: SceneObject) -> list[float]:
  """The shape's outline as a flat COCO polygon [x0, y0, x1, y1, ...]."""
  cy, cx = obj.centres[0]
  r = obj.radius
  if obj.shape == "circle":
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
  elif obj.shape == "square":
    points = np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
  else:
    points = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
  return [round(float(v), 2) for v in points.reshape(-1)]


def _refcoco_texts(obj: SceneObject, width: int) -> list[str]:
  """Still-image expressions: the shape alone, and where it lies."""
  x = obj.centres[0, 1] / width
  where = "on the left" if x < 1 / 3 else "on the right" if x > 2 / 3 else "in the middle"
  return [obj.name, f"{obj.name} {where}"]


# REFER's (dataset folder, split_by, splits), and whether ReferFormer converts that split_by.
_REFER_SPLITS = (("refcoco", "unc", ("train", "val", "testA", "testB"), True),
                 ("refcoco+", "unc", ("train", "val", "testA", "testB"), True),
                 ("refcocog", "umd", ("train", "val", "test"), True),
                 ("refcocog", "google", ("train", "val"), False))


def _write_refcoco(root: str, rng: np.random.Generator, num_videos: int, num_frames: int,
                   size: tuple[int, int]) -> None:
  """RefCOCO/+/g: COCO JPEGs, the REFER release (refs(<split_by>).p, instances.json) and
  ReferFormer's conversion of its unc / umd splits (instances_<ds>_<split>.json).

  Every image holds 3 objects, each referred to by one ref of 2 sentences; object 2's mask is
  compressed RLE, the others' polygons. Refs take the splits in turn (shifted per split_by).
  The refs are pickled with protocol 2, as REFER's Python 2 pickles are.
  """
  del num_frames  # Images.
  h, w = size
  coco_images, coco_annotations, scenes = [], [], []
  for index in range(num_videos):
    scene = _new_scene(rng, 1, size, num_objects=len(SHAPES))
    image = scene.background.copy()
    coco_id = 1000 + index
    for k, obj in enumerate(scene.objects):
      rle = mask_utils.merge(mask_utils.frPyObjects([_polygon(obj)], h, w))
      image[mask_utils.decode(rle) > 0] = COLOURS[obj.colour]
      segmentation = ({"size": [h, w], "counts": rle["counts"].decode("ascii")} if k == 2
                      else [_polygon(obj)])
      coco_annotations.append({
          "segmentation": segmentation, "area": float(mask_utils.area(rle)), "iscrowd": 0,
          "image_id": coco_id, "bbox": [float(v) for v in mask_utils.toBbox(rle)],
          "category_id": SHAPES.index(obj.shape) + 1, "id": 100 * coco_id + k})
    file_name = f"COCO_train2014_{coco_id:012d}.jpg"
    _put(os.path.join(root, "coco", "train2014", file_name), _encode(image, "JPEG"))
    coco_images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": h,
                        "width": w, "date_captured": "", "flickr_url": "", "id": coco_id})
    scenes.append(scene)
  instances = {"info": {}, "images": coco_images, "licenses": [],
               "annotations": coco_annotations,
               "categories": [{"supercategory": "shape", "id": i + 1, "name": s}
                              for i, s in enumerate(SHAPES)]}
  for shift, (folder, split_by, splits, converted) in enumerate(_REFER_SPLITS):
    refs = _refer_refs(coco_images, coco_annotations, scenes, splits, shift, w)
    _put_json(os.path.join(root, "coco", folder, "instances.json"), instances)
    _put(os.path.join(root, "coco", folder, f"refs({split_by}).p"),
         pickle.dumps(refs, protocol=2))
    for split in splits if converted else ():
      _put_json(os.path.join(root, "coco", folder, f"instances_{folder}_{split}.json"),
                _referformer_split(instances, refs, folder, split))


def _refer_refs(images: list[dict], annotations: list[dict], scenes: list[Scene],
                splits: tuple[str, ...], shift: int, width: int) -> list[dict]:
  """REFER refs: one per annotation, ids and sentence ids numbered from 0."""
  by_id = {image["id"]: (image, scene) for image, scene in zip(images, scenes)}
  refs = []
  for annotation in annotations:
    image, scene = by_id[annotation["image_id"]]
    obj = scene.objects[annotation["id"] % 100]
    sentences = [{"tokens": text.split(), "raw": text.upper(),
                  "sent_id": 2 * len(refs) + n, "sent": text}
                 for n, text in enumerate(_refcoco_texts(obj, width))]
    refs.append({"sent_ids": [s["sent_id"] for s in sentences],
                 "file_name": f"{image['file_name'][:-4]}_{annotation['id']}.jpg",
                 "ann_id": annotation["id"], "ref_id": len(refs),
                 "image_id": image["id"], "split": splits[(len(refs) + shift) % len(splits)],
                 "sentences": sentences, "category_id": annotation["category_id"]})
  return refs


def _referformer_split(instances: dict, refs: list[dict], dataset: str, split: str) -> dict:
  """ReferFormer's conversion of one split: an image entry and annotation per sentence."""
  images = {image["id"]: image for image in instances["images"]}
  annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}
  entries, entry_annotations = [], []
  for ref in refs:
    if ref["split"] != split:
      continue
    image, annotation = images[ref["image_id"]], annotations[ref["ann_id"]]
    for sentence in ref["sentences"]:
      k = len(entries) + 1
      entries.append({"file_name": image["file_name"], "height": image["height"],
                      "width": image["width"], "original_id": image["id"], "id": k,
                      "caption": sentence["sent"], "dataset_name": dataset})
      entry_annotations.append({
          "segmentation": annotation["segmentation"], "area": annotation["area"],
          "iscrowd": annotation["iscrowd"], "bbox": annotation["bbox"], "image_id": k,
          "category_id": annotation["category_id"], "id": k, "original_id": annotation["id"]})
  return {"info": instances["info"], "licenses": instances["licenses"], "images": entries,
          "annotations": entry_annotations, "categories": instances["categories"]}


_WRITERS = {
    "ytvos": _write_ytvos,
    "davis": _write_davis,
    "a2d": _write_a2d,
    "jhmdb": _write_jhmdb,
    "refcoco": _write_refcoco,
}


def write(dataset: str, root: str, *, num_videos: int = 2, num_frames: int = 6,
          size: tuple[int, int] = (48, 64), seed: int = 0) -> None:
  """Writes a synthetic `dataset` ("ytvos", "davis", "a2d", "jhmdb", "refcoco") under root.

  num_videos: videos (RefCOCO: images) per split; num_frames: frames per video;
  size: (H, W) of every frame; seed: the same seed gives the same files.
  """
  if dataset not in _WRITERS:
    raise SyntheticError(f"unknown dataset {dataset!r}; known: {DATASETS}")
  if num_videos < 1 or num_frames < 1:
    raise SyntheticError(f"num_videos and num_frames must be >= 1, got {num_videos}, "
                         f"{num_frames}")
  rng = np.random.default_rng([seed, DATASETS.index(dataset)])
  _WRITERS[dataset](root, rng, num_videos, num_frames, tuple(size))


def main(argv: list[str] | None = None) -> int:
  """Runs the command; returns the exit status (0 ok, 1 bad input, 2 usage)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--dataset", required=True, choices=DATASETS)
  parser.add_argument("--out", required=True, help="the dataset root to write")
  parser.add_argument("--num_videos", type=int, default=2)
  parser.add_argument("--num_frames", type=int, default=6)
  parser.add_argument("--height", type=int, default=48)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--verbose", action="store_true",
                      help="show the traceback of input errors too")
  args = parser.parse_args(argv)
  return errors.run_command(lambda: write(
      args.dataset, args.out, num_videos=args.num_videos, num_frames=args.num_frames,
      size=(args.height, args.width), seed=args.seed), verbose=args.verbose)


if __name__ == "__main__":
  sys.exit(main())
