r"""Segment your own video: referring masks for any text, from a trained (exported) model.

  python -m vdit_jax.predict --checkpoint DIR --video FILE_OR_FRAMES_DIR --text "..." \
      [--text "..."] --out DIR [--threshold 0.5] [--fps N] [--max-frames N] [--gif]
      [--config CONFIG] [--backbone DIR] [--fp32] [--deterministic-latents]

writes, per expression, OUT/<expression-slug>/<frame>.png (the mask, 0 / 255, at the
frame's size) and OUT/<expression-slug>.mp4 (the frames with the mask in colour and the
text; .gif too with --gif), and OUT/summary.json (frames, expressions with their mean and
per-frame scores, timings). From Python:

  predictor = Predictor.from_checkpoint("workdirs/ytvos/export")
  masks, scores = predictor(frames, ["the man holding a bike"])  # (E, T, H, W) bool, (E, T)

How a video runs. Frames are resized and padded as evaluation does them
(`config.eval.preprocessing`: shorter side 360, longer at most 640) and cut into windows of
`config.predict.window` frames (the last window is the video's last `window` frames, so
every window has real frames and one shape; a shorter video is one window). Per window the
text-independent work (VAE latents and the learned noise, CLIP image tokens, the stride-4
level: `VDIT.encode_video`) runs once, and the expressions' text-dependent work
(`VDIT.segment`: CLIP text, cross attention, the UNet's tap blocks, adapters, RoBERTa, the
head) in batches of `config.predict.expressions_per_step` on that one encoding. Each
expression's mask on a window is that of the query with the best mean score over the
window's frames (the original picks one query per video, inference_ytvos.py:213-219; a
video longer than one window gets one choice per window). Masks are brought back to the
frame size as the evaluators do (vdit_jax.evaluation.original_size).

Precision: the frozen towers compute in bfloat16 on GPUs and TPUs and in float32 on CPUs
(--fp32 forces float32); the adapters and the head always run in float32. Latents: the
original samples the VAE posterior; so does this (one sample per window, from
config.seed), unless --deterministic-latents takes the posterior mean, a deviation from the
original that makes outputs reproducible across window layouts and runs.
"""

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import sys
import time
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from data_pipelines import decoding
from data_pipelines import eval_windows
from data_pipelines import transforms
from vdit_jax import checkpoints, errors, prediction_outputs, tokenizers, train_state
from vdit_jax import video_io, xla_options
from vdit_jax.evaluation import original_size
from vdit_jax.models import vdit as vdit_lib

PRECISIONS = ("auto", "float32", "bfloat16")


class PredictError(errors.UserError, ValueError):
  """Bad input to prediction: an empty text, a bad frame array, a config that is unusable."""


def tower_dtype(precision: str) -> str:
  """The towers' compute dtype for a precision of PRECISIONS; "auto" is bfloat16 on
  accelerators and float32 on CPUs (where bfloat16 is emulated and slower)."""
  if precision not in PRECISIONS:
    raise PredictError(f"precision must be one of {PRECISIONS}, got {precision!r}")
  if precision == "auto":
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return precision


def inference_config(config: ml_collections.ConfigDict, *, precision: str = "auto",
                     backbone: str | None = None) -> ml_collections.ConfigDict:
  """A copy of an experiment config set up for prediction.

  The towers compute in `tower_dtype(precision)`, and converted tower parameters are cast
  to it on load (random towers keep their parameter dtype, so their values stay those of
  the training run's seed); the head runs on every frame (a model trained on A2D's
  annotated frames segments all of a video's); `backbone` replaces config.model.weights_dir.
  """
  config = copy.deepcopy(config)
  dtype = tower_dtype(precision)
  if backbone:
    config.model.weights_dir = backbone
  for settings in config.model.towers.values():
    settings.dtype = dtype
    if config.model.weights_dir:
      settings.param_dtype = dtype
  config.model.head_frames = "all"
  return config


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of `path/to/config.py[:arg]`, as `--config` of vdit_jax.main names it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise PredictError(f"--config {path}: no such file")
  module_spec = importlib.util.spec_from_file_location("_vdit_predict_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def exported_config(directory: str) -> ml_collections.ConfigDict:
  """The run's config an export directory holds (config.json)."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise PredictError(f"{directory}: no config.json; --checkpoint takes an export directory "
                       "(config.json, params/, manifest.json: python -m vdit_jax.main "
                       "--mode=export), or a run's checkpoint together with --config")
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise PredictError(f"{path}: not a readable config ({e})") from e


def check_texts(texts: str | Sequence[str]) -> list[str]:
  """The expressions as a list; one string is one expression. Raises PredictError for
  none, or for one that is empty or only whitespace."""
  texts = [texts] if isinstance(texts, str) else list(texts)
  if not texts:
    raise PredictError("no expression to segment: give at least one text")
  for i, text in enumerate(texts, start=1):
    if not isinstance(text, str) or not text.strip():
      raise PredictError(f"expression {i} of {len(texts)} is empty ({text!r}): give the words "
                         "that describe the object")
  return texts


@dataclasses.dataclass(frozen=True)
class WindowResult:
  """What one window adds: its frames that no earlier window covered, in video order.

  frames: (n, H, W, 3) uint8, the frames as given.
  masks: (E, n, H, W) bool, each expression's mask.
  scores: (E, n) float32, the chosen query's score on each frame.
  probabilities: (E, n, h, w) float32, the mask probabilities at the size the model saw
    the frames (resized, unpadded), before the resize to (H, W) and the threshold.
  """
  frames: np.ndarray
  masks: np.ndarray
  scores: np.ndarray
  probabilities: np.ndarray


# Compiled executables by (function, model structure, argument shapes), shared by every
# Predictor of a process (a notebook re-creating one, several commands in one process).
_EXECUTABLES: dict = {}


def _encode(graphdef, deterministic, state, frames, pad_mask, key):
  model = nnx.merge(graphdef, state)
  return model.encode_video(frames, pad_mask, rng=key, deterministic_latents=deterministic)


def _segment(graphdef, state, video, batch):
  model = nnx.merge(graphdef, state)
  index = jnp.zeros(batch["clip_ids"].shape[:1], jnp.int32)
  return model.segment(video, batch, video_index=index)


def _avals(tree) -> tuple:
  return tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(tree))


def _windows(frames: Iterable[np.ndarray], length: int
             ) -> Iterator[tuple[list[np.ndarray], int]]:
  """(window frames, how many of its last frames are new): windows of `length` frames; the
  last one is filled up with the frames before it (a video shorter than `length` is one
  window of its own length)."""
  previous, chunk = [], []
  for frame in frames:
    chunk.append(frame)
    if len(chunk) == length:
      yield chunk, length
      previous, chunk = chunk, []
  if chunk:
    yield previous[len(chunk):] + chunk, len(chunk)


def _frames_array(frames: list[np.ndarray], *, first: int,
                  shape: tuple[int, ...] | None) -> np.ndarray:
  """A window's frames as one (N, H, W, 3) uint8 array.

  Args:
    frames: the window's frames.
    first: the first one's index in the video.
    shape: (H, W, 3) of the video's frame 0; None: this is frame 0.
  """
  shape = np.shape(frames[0]) if shape is None else shape
  for i, frame in enumerate(frames):
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
      raise PredictError(f"frame {first + i} must be an (H, W, 3) uint8 RGB array, got "
                         f"{frame.dtype} {frame.shape}")
    if frame.shape != tuple(shape):
      raise PredictError(f"frame {first + i} is {frame.shape[0]}x{frame.shape[1]} (HxW), "
                         f"frame 0 is {shape[0]}x{shape[1]}: the frames of a video must have "
                         "one size")
  return np.stack(frames)


class Predictor:
  """A trained VD-IT model that segments videos for texts (module docstring).

  Args:
    model: the model, its trained parameters in place (built from `config`).
    config: its experiment config (`inference_config`), read: seed, data.text,
      model.weights_dir, eval.preprocessing, eval.mask_threshold, predict.
    threshold: mask probabilities above it are foreground; default
      config.eval.mask_threshold.
    deterministic_latents: the VAE posterior mean instead of a sample (module docstring).
    step: the training step of the parameters, for the record.

  Attributes:
    timings: seconds so far in "compile" (XLA, once per new shape), "model" (the jitted
      model, to its outputs on the host) and "postprocess" (resize to the frame size and
      threshold).
  """

  def __init__(self, model: vdit_lib.VDIT, config: ml_collections.ConfigDict, *,
               threshold: float | None = None, deterministic_latents: bool = False,
               step: int | None = None):
    self.config, self.step = config, step
    self.threshold = config.eval.mask_threshold if threshold is None else float(threshold)
    if not 0 < self.threshold < 1:
      raise PredictError(f"the threshold must be in (0, 1), got {self.threshold}")
    self.deterministic_latents = deterministic_latents
    self.preprocessing = eval_windows.Preprocessing(**config.eval.preprocessing)
    self.window = int(config.predict.window)
    self.expressions_per_step = int(config.predict.expressions_per_step)
    if self.window < 1 or self.expressions_per_step < 1:
      raise PredictError(f"config.predict.window ({self.window}) and expressions_per_step "
                         f"({self.expressions_per_step}) must be at least 1")
    self.tokenize = tokenizers.CaptionTokenizer.for_model(config.model.weights_dir,
                                                          **config.data.text)
    model.eval()
    self._graphdef, self._state = nnx.split(model)
    self._state_avals = _avals(self._state)
    self._key = jax.random.key(config.seed)
    self.timings = dict.fromkeys(("compile", "model", "postprocess"), 0.0)

  @classmethod
  def from_checkpoint(cls, path: str, *, config: ml_collections.ConfigDict | str | None = None,
                      backbone: str | None = None, precision: str = "auto",
                      threshold: float | None = None, deterministic_latents: bool = False
                      ) -> "Predictor":
    """The predictor of an export directory (or, with `config`, a run's checkpoint).

    Args:
      path: an export directory (config.json, params/, manifest.json) or anything
        `checkpoints.load_trained` reads.
      config: the experiment config (a ConfigDict or "configs/x.py[:arg]") instead of the
        export's config.json.
      backbone: the converted backbone directory, if not the config's model.weights_dir.
      precision, threshold, deterministic_latents: see `inference_config` and the class.

    Raises:
      PredictError, checkpoints.CheckpointError (parameters or backbone that do not match
      the config), backbone_format.ConvertedBackboneError: naming the path.
    """
    if not os.path.exists(path):
      raise PredictError(f"{path}: no such checkpoint directory")
    if isinstance(config, str):
      config = load_config(config)
    config = inference_config(exported_config(path) if config is None else config,
                              precision=precision, backbone=backbone)
    if "predict" not in config:
      raise PredictError(f"{path}: its config has no `predict` section (configs/common.py "
                         "prediction()); pass --config")
    model = vdit_lib.build(config)
    parts = train_state.split(model)
    params, step = checkpoints.load_trained(
        path, parts.params, backbone=checkpoints.backbone_reference(config.model, config.seed))
    nnx.update(model, params)
    return cls(model, config, threshold=threshold, deterministic_latents=deterministic_latents,
               step=step)

  def __call__(self, frames: np.ndarray, texts: str | Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Masks and scores of every expression on every frame.

    Args:
      frames: (T, H, W, 3) uint8 RGB.
      texts: the expressions (E of them; one string is one).

    Returns:
      masks (E, T, H, W) bool and scores (E, T) float32 (the chosen query's score per frame).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
      raise PredictError(f"frames must be a (T, H, W, 3) uint8 RGB array with T >= 1, got "
                         f"{frames.dtype} {frames.shape}")
    results = list(self.stream(frames, texts))
    return (np.concatenate([r.masks for r in results], axis=1),
            np.concatenate([r.scores for r in results], axis=1))

  def stream(self, frames: Iterable[np.ndarray], texts: str | Sequence[str]
             ) -> Iterator[WindowResult]:
    """`__call__` a window at a time, for videos that do not fit in memory: frames is any
    iterable of (H, W, 3) uint8 frames of one size, read as the windows need them."""
    texts = check_texts(texts)
    tokens = [self.tokenize(decoding.clean_caption(t)) for t in texts]
    tokens = {k: np.stack([t[k] for t in tokens]) for k in ("clip_ids", "roberta_ids",
                                                             "roberta_mask")}
    seen, shape = 0, None
    for index, (window, new) in enumerate(_windows(frames, self.window)):
      window = _frames_array(window, first=seen + new - len(window), shape=shape)
      shape = window.shape[1:]
      masks, scores, probabilities = self._window(window, tokens, index)
      yield WindowResult(frames=window[-new:], masks=masks[:, -new:], scores=scores[:, -new:],
                         probabilities=probabilities[:, -new:])
      seen += new

  def _executable(self, name: str, fn, *args):
    """fn jitted and compiled for these arguments (after the state), kept in _EXECUTABLES."""
    key = (name, self._graphdef, self.deterministic_latents, self._state_avals, _avals(args))
    if key not in _EXECUTABLES:
      start = time.perf_counter()
      _EXECUTABLES[key] = jax.jit(fn).lower(self._state, *args).compile(
          xla_options.for_backend())
      self.timings["compile"] += time.perf_counter() - start
    return _EXECUTABLES[key]

  def _window(self, frames: np.ndarray, tokens: dict[str, np.ndarray], index: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masks (E, N, H, W) bool, scores (E, N), probabilities (E, N, h, w)) of one window of
    N frames (WindowResult)."""
    pre = self.preprocessing
    resized = transforms.eval_resize(frames, pre.short_side, pre.max_size)
    size = resized.shape[1:3]
    shape = pre.padded_size(size)
    video_args = (transforms.pad_batch([resized], shape, (1, 2)),
                  transforms.padding_mask(size, shape)[None],
                  jax.random.fold_in(self._key, index))
    start, compiling = time.perf_counter(), self.timings["compile"]
    encode = self._executable("encode", lambda *a: _encode(
        self._graphdef, self.deterministic_latents, *a), *video_args)
    video = encode(self._state, *video_args)
    count = len(tokens["clip_ids"])
    group = min(count, self.expressions_per_step)
    # The last batch is filled up with the last expression; its extra rows are dropped.
    rows = np.minimum(np.arange(-(-count // group) * group), count - 1)
    probabilities, scores = [], []
    for begin in range(0, len(rows), group):
      batch = {k: v[rows[begin:begin + group]] for k, v in tokens.items()}
      batch.update(size=np.array([size], np.int32), frame_valid=np.ones((1, len(frames)), bool))
      segment = self._executable("segment", lambda *a: _segment(self._graphdef, *a), video,
                                 batch)
      out = segment(self._state, video, batch)
      probabilities.append(np.asarray(out["masks"])[:, :, :size[0], :size[1]])
      scores.append(np.asarray(out["frame_scores"]))
    probabilities = np.concatenate(probabilities)[:count]
    scores = np.concatenate(scores)[:count]
    self.timings["model"] += (time.perf_counter() - start
                              - (self.timings["compile"] - compiling))
    start = time.perf_counter()
    masks = original_size.binary_at(probabilities, frames.shape[1:3], self.threshold)
    self.timings["postprocess"] += time.perf_counter() - start
    return masks, scores, probabilities


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m vdit_jax.predict",
      description="Segment the objects that texts describe in a video (masks, overlays, "
                  "summary.json).")
  parser.add_argument("--checkpoint", required=True,
                      help="an export directory (python -m vdit_jax.main --mode=export), or "
                           "a run's checkpoint with --config")
  parser.add_argument("--video", required=True,
                      help="a video file (mp4, webm, mov, ...) or a folder of JPEG / PNG frames")
  parser.add_argument("--text", action="append", required=True,
                      help="an expression to segment; repeat for more")
  parser.add_argument("--out", required=True, help="the output directory")
  parser.add_argument("--threshold", type=float, default=None,
                      help="mask probability threshold (default: the config's "
                           "eval.mask_threshold, 0.5)")
  parser.add_argument("--fps", type=float, default=None,
                      help="sample a video at this many frames per second (a frames folder: "
                           f"its frame rate, default {video_io.FOLDER_FPS:g})")
  parser.add_argument("--max-frames", type=int, default=None,
                      help="only the first this many frames")
  parser.add_argument("--gif", action="store_true", help="also write GIF overlays")
  parser.add_argument("--config", default=None,
                      help="configs/<x>.py[:arg] instead of the checkpoint's config.json")
  parser.add_argument("--backbone", default=None,
                      help="the converted backbone directory, if not the config's "
                           "model.weights_dir")
  parser.add_argument("--fp32", action="store_true",
                      help="run the towers in float32 on accelerators too (default there: "
                           "bfloat16)")
  parser.add_argument("--deterministic-latents", action="store_true",
                      help="the VAE posterior mean instead of a sample (reproducible; the "
                           "original samples)")
  parser.add_argument("--verbose", action="store_true",
                      help="show the traceback of input errors too")
  return parser.parse_args(argv)


def _predict(args: argparse.Namespace) -> None:
  started = time.perf_counter()
  texts = check_texts(args.text)
  source = video_io.open_video(args.video, fps=args.fps, max_frames=args.max_frames)
  predictor = Predictor.from_checkpoint(
      args.checkpoint, config=args.config, backbone=args.backbone,
      precision="float32" if args.fp32 else "auto", threshold=args.threshold,
      deterministic_latents=args.deterministic_latents)
  loaded = time.perf_counter()
  writer = prediction_outputs.OutputWriter(args.out, texts, fps=source.fps, gif=args.gif)
  names = []

  def frames():
    for name, frame in source.frames():
      names.append(name)
      yield frame

  with tqdm.tqdm(total=source.count, desc="segmenting", unit="frame") as bar:
    for result in predictor.stream(frames(), texts):
      done = len(writer.frame_names)
      writer.add(names[done:done + len(result.frames)], result.frames, result.masks,
                 result.scores)
      bar.update(len(result.frames))
  timings = {f"{k}_s": round(v, 3) for k, v in predictor.timings.items()}
  count = len(writer.frame_names)
  rate = count * len(texts) / max(predictor.timings["model"], 1e-9)
  timings.update(load_s=round(loaded - started, 3),
                 total_s=round(time.perf_counter() - started, 3),
                 frames_per_second_per_expression=round(rate, 2))
  summary = writer.close({
      "video": os.path.abspath(args.video), "checkpoint": os.path.abspath(args.checkpoint),
      "step": predictor.step, "size": list(source.size), "fps": source.fps,
      "threshold": predictor.threshold, "window": predictor.window,
      "towers_dtype": predictor.config.model.towers.unet.dtype,
      "deterministic_latents": predictor.deterministic_latents, "timings": timings})
  for expression in summary["expressions"]:
    outputs = [expression["masks"]] + expression["overlays"]
    print(f"{expression['mean_score']:.3f}  {expression['text']!r}: "
          + ", ".join(os.path.join(args.out, o) for o in outputs))
  print(f"{count} frames x {len(texts)} expressions: {rate:.1f} frames/s per expression "
        f"(model {timings['model_s']:.2f} s, compile {timings['compile_s']:.1f} s, total "
        f"{timings['total_s']:.1f} s); summary: "
        f"{os.path.join(args.out, prediction_outputs.SUMMARY)}")


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command; returns the exit status (0 ok, 1 bad input, 2 usage)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  return errors.run_command(lambda: _predict(args), verbose=args.verbose)


if __name__ == "__main__":
  sys.exit(main())
