"""`evaluate`: a predict function evaluated on one benchmark split, on one or many processes.

  evaluate(config, workdir, predict_fn, tokenize=..., step=...) -> EvalResult

Every process reads its own shards' windows (data_pipelines.pipeline.make_eval_iter), batches
them by shape in steps all processes take together (shape_batches), calls `predict_fn` (the
contract: vdit_jax/evaluation/prediction.py), gathers the windows back into whole videos
(assembly) and hands each finished video to the dataset's benchmark, which writes its files
(the Ref-YouTube-VOS submission, the Ref-DAVIS17 id maps) and keeps what scoring needs. Then
each process writes its part to <out>/parts/; process 0 merges the parts (in video order, so
any process count gives the same result), scores them, writes <out>/results.json and prints
the tables. <out> is <workdir>/eval/<dataset> unless given; on several hosts it must be a
shared file system.

results.json: dataset, split, step (of the checkpoint evaluated), figures (fractions; papers
quote them x 100), files (what was written, relative to <out>), counts (videos expected from
the shards' record counts, evaluated, incomplete (some windows skipped as bad input) and
missing (no window came), windows), shapes (the distinct (N, H, W) the model ran, one
compilation each) and the config. Nothing in it depends on the number of processes.

Benchmarks: ytvos_submission.YtvosSubmission (Ref-YouTube-VOS), davis_runs.DavisRuns
(Ref-DAVIS17), sample_benchmarks.SampleBenchmark (A2D / JHMDB-Sentences, RefCOCO/+/g). Each
has `outputs` (names it writes under <out>, cleared before a run), `video(video) -> part`
(JSON-ready) and `finish(parts) -> (figures, files, text)`, text the printed tables.
"""

import dataclasses
import json
import os
import shutil
from typing import Iterator

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from data_pipelines import decoding
from data_pipelines import eval_windows
from data_pipelines import pipeline
from vdit_jax import errors
from vdit_jax.evaluation import assembly
from vdit_jax.evaluation import davis_runs
from vdit_jax.evaluation import overlay
from vdit_jax.evaluation import prediction
from vdit_jax.evaluation import sample_benchmarks
from vdit_jax.evaluation import shape_batches
from vdit_jax.evaluation import ytvos_submission

PARTS = "parts"
RESULTS = "results.json"
# The query mode each benchmark scores (config.eval.queries).
QUERIES = {"ytvos": "best", "davis": "best", "a2d": "all", "jhmdb": "all", "refcoco": "all"}


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """figures: name -> value (every process); images: name -> (h, w, 3) uint8 mask overlays
  (process 0); results: the results.json path."""
  figures: dict[str, float]
  images: dict[str, np.ndarray]
  results: str


def make_benchmark(config: ml_collections.ConfigDict, out_dir: str):
  """The benchmark of config.data.dataset, writing under out_dir."""
  dataset, ev = config.data.dataset, config.eval
  if dataset not in QUERIES:
    raise errors.ConfigError(f"config.data.dataset {dataset!r} has no evaluation; known: "
                             f"{sorted(QUERIES)}")
  if ev.queries != QUERIES[dataset]:
    raise errors.ConfigError(f"config.eval.queries must be {QUERIES[dataset]!r} for {dataset} "
                             f"(vdit_jax/evaluation/prediction.py), got {ev.queries!r}")
  if dataset == "ytvos":
    return ytvos_submission.YtvosSubmission(out_dir, ev.mask_threshold)
  if dataset == "davis":
    return davis_runs.DavisRuns(out_dir, config.data.davis_dir, ev.image_set, ev.mask_threshold,
                                ev.background_score)
  return sample_benchmarks.SampleBenchmark(out_dir, dataset, ev.mask_threshold)


def _first_videos(windows: Iterator[dict], count: int) -> Iterator[dict]:
  """The windows of the first `count` videos (all: count <= 0)."""
  seen = set()
  for window in windows:
    key = str(window["split"][0]), str(window["video_id"][0])
    if key not in seen:
      if 0 < count <= len(seen):
        return
      seen.add(key)
    yield window


def _clear(out_dir: str, names: tuple[str, ...]) -> None:
  """Removes what an earlier run wrote under out_dir (stale files would join the zip)."""
  for name in names:
    path = os.path.join(out_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  os.makedirs(out_dir, exist_ok=True)


def _window_overlay(batch: dict, row: int, result: assembly.WindowResult, queries: str,
                    threshold: float) -> np.ndarray:
  """The window's annotated (else first valid) frame with its top mask, at input size."""
  h, w = (int(s) for s in batch["size"][row])
  if queries == "best":
    t = int(np.argmax(result.annotated)) if result.annotated.any() else 0
    frame, mask = batch["frames"][row][batch["frame_valid"][row]][t], result.masks[t]
  else:
    frame = batch["frames"][row][int(np.argmax(batch["annotated"][row]))]
    mask = result.masks[int(np.argmax(result.scores))]
  return overlay.mask_overlay(frame[:h, :w], mask > threshold)


def _write_json(path: str, value) -> None:
  """Writes JSON to path at once (a reader never sees half a file)."""
  with open(path + ".partial", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(path + ".partial", path)


def _part_path(out_dir: str, index: int, count: int) -> str:
  return os.path.join(out_dir, PARTS, f"process-{index:05d}-of-{count:05d}.json")


def _run(config, predict_fn: prediction.PredictFn, benchmark, *,
         tokenize: decoding.Tokenize | None, max_videos: int, num_images: int,
         progress: bool) -> tuple[dict, list[shape_batches.Shape], dict[str, np.ndarray]]:
  """This process's windows through predict_fn and the benchmark: (part file content,
  shapes, overlays)."""
  index, count = jax.process_index(), jax.process_count()
  quota = -(-max_videos // count) if max_videos > 0 else 0
  expected = pipeline.eval_video_count(config, index, count)
  expected = min(expected, quota) if quota else expected
  ev = config.eval
  filler = eval_windows.EvalWindow(eval_windows.Preprocessing(**ev.preprocessing),
                                   config.data.skip_bad_records, tokenize).filler
  batch_size = ev.batch_per_device * jax.local_device_count()
  windows = pipeline.make_eval_iter(config, index, count, tokenize)
  batches = shape_batches.ShapeBatches(_first_videos(windows, quota), batch_size, filler,
                                       multihost_utils.process_allgather)
  assembler = assembly.VideoAssembler()
  parts, images, num_windows, steps = [], {}, 0, 0
  try:
    with tqdm.tqdm(total=expected, desc=f"eval {config.data.dataset} {ev.split}", unit="video",
                   disable=not progress or index != 0) as bar:
      for batch, truths in batches:
        outputs = prediction.check_outputs(predict_fn(batch), batch, ev.queries)
        steps += 1
        for row, truth in enumerate(truths):
          result = assembly.window_result(batch, row, outputs, truth, ev.queries)
          if len(images) < num_images:
            images[f"overlay_{len(images)}"] = _window_overlay(batch, row, result, ev.queries,
                                                               ev.mask_threshold)
          for video in assembler.add(result):
            parts.append({"split": video.split, "video_id": video.video_id,
                          **benchmark.video(video)})
            bar.update()
        num_windows += len(truths)
  finally:
    windows.close()
  incomplete = [list(key) for key in assembler.incomplete()]
  part = {"parts": parts, "windows": num_windows, "expected": expected, "steps": steps,
          "incomplete": incomplete}
  return part, batches.shapes, images


def _merge(out_dir: str, count: int) -> tuple[list[dict], dict]:
  """Every process's parts in video order, and the summed counts."""
  parts, counts = [], {"videos_expected": 0, "windows": 0, "incomplete": []}
  for index in range(count):
    with open(_part_path(out_dir, index, count), encoding="utf-8") as f:
      part = json.load(f)
    parts += part["parts"]
    counts["videos_expected"] += part["expected"]
    counts["windows"] += part["windows"]
    counts["incomplete"] += part["incomplete"]
  parts.sort(key=lambda p: (p["split"], p["video_id"]))
  counts["incomplete"].sort()
  counts["videos_evaluated"] = len(parts)
  counts["videos_incomplete"] = len(counts["incomplete"])
  counts["videos_missing"] = (counts["videos_expected"] - len(parts)
                              - counts["videos_incomplete"])
  return parts, counts


def _report(config, step: int | None, files: dict, counts: dict, shapes: list,
            text: str) -> str:
  """The printed summary."""
  lines = [f"==== {config.data.dataset} {config.eval.split}, step {step} ====", text]
  lines.append(f"videos: {counts['videos_evaluated']} evaluated of {counts['videos_expected']}"
               f", {counts['videos_incomplete']} incomplete, {counts['videos_missing']} "
               f"missing (skipped as bad input or without expressions); "
               f"{counts['windows']} windows")
  lines.append(f"compiled shapes (N, H, W): {len(shapes)}: "
               + ", ".join("x".join(map(str, s)) for s in sorted(shapes)))
  lines += [f"{name}: {path}" for name, path in files.items()]
  return "\n".join(lines)


def evaluate(config: ml_collections.ConfigDict, workdir: str, predict_fn: prediction.PredictFn,
             *, tokenize: decoding.Tokenize | None = None, step: int | None = None,
             out_dir: str | None = None, max_videos: int = 0, num_images: int = 0,
             progress: bool = True) -> EvalResult:
  """Evaluates predict_fn on config.eval.split of config.data.dataset (module docstring).

  Every JAX process calls it (after jax.distributed.initialize, for several).

  Args:
    config: the experiment config (fields read: seed, data, eval).
    workdir: the run's directory; results go to <workdir>/eval/<dataset> by default.
    predict_fn: batch -> {"masks", "scores"} (vdit_jax/evaluation/prediction.py).
    tokenize: the caption tokenizer the model reads tokens from (CaptionTokenizer).
    step: the checkpoint's train step, recorded in results.json.
    out_dir: where to write instead of <workdir>/eval/<dataset>.
    max_videos: evaluate only the first videos (split over the processes); 0: all.
    num_images: mask overlays to return (the first windows of process 0).
    progress: show a progress bar over videos (process 0).
  """
  out_dir = out_dir or os.path.join(workdir, "eval", config.data.dataset)
  benchmark = make_benchmark(config, out_dir)
  index, count = jax.process_index(), jax.process_count()
  if index == 0:
    _clear(out_dir, benchmark.outputs + (PARTS, RESULTS))
  multihost_utils.sync_global_devices("vdit evaluation: outputs cleared")
  part, shapes, images = _run(config, predict_fn, benchmark, tokenize=tokenize,
                              max_videos=max_videos, num_images=num_images if index == 0 else 0,
                              progress=progress)
  os.makedirs(os.path.join(out_dir, PARTS), exist_ok=True)
  _write_json(_part_path(out_dir, index, count), part)
  multihost_utils.sync_global_devices("vdit evaluation: parts written")
  results_path = os.path.join(out_dir, RESULTS)
  if index == 0:
    parts, counts = _merge(out_dir, count)
    figures, files, text = benchmark.finish(parts)
    results = {"dataset": config.data.dataset, "split": config.eval.split, "step": step,
               "figures": figures, "counts": counts,
               "files": {k: os.path.relpath(v, out_dir) for k, v in files.items()},
               "shapes": [list(s) for s in sorted(shapes)],
               "config": json.loads(config.to_json_best_effort(sort_keys=True))}
    _write_json(results_path, results)
    print(_report(config, step, files, counts, shapes, text))
    print(f"{part['steps']} predict steps on each of {count} processes; results: "
          f"{results_path}")
  multihost_utils.sync_global_devices("vdit evaluation: results written")
  with open(results_path, encoding="utf-8") as f:
    figures = json.load(f)["figures"]
  return EvalResult(figures=figures, images=images, results=results_path)
