"""Builds a raw dataset into the project's shards of one split, or into a TFDS dataset.

  python -m data_pipelines.build --dataset ytvos --raw DIR --split train --out DIR \
      [--num_shards N] [--workers K] [--format tfrecord|array_record] [--overwrite] \
      [--skip_bad_records]

writes `<out>/<split>/` as `shards.py` describes. The sorted video ids are cut into
`num_shards` contiguous runs of near-equal length (default: one shard per 64 videos), K
spawned worker processes read and encode the videos, and the main process writes them in
order, so the bytes do not depend on K. Everything is written into a temporary directory
beside the target and renamed into place at the end; an existing target is an error unless
--overwrite. A video whose reading or encoding fails (or that lacks the frame an expression
is anchored on) stops the build with an error naming it, or with --skip_bad_records is
logged, left out and listed in dataset_info.json, which also records what counting the
training samples needs (`sampling.AnchorCounts`).

  python -m data_pipelines.build --dataset ytvos --raw DIR --out DIR --format tfds [...]

prepares every split at once, without --split, as the TFDS ArrayRecord dataset of
`tfds_builders.py` in `<out>/<TFDS name>/[<config>/]<version>/` (RefCOCO: one per subset);
--num_shards then counts the shards of each split (default: TFDS's choice by size), and the
other flags mean the same. Skipped videos and the AnchorCounts of each split are in that
directory's metadata.json.
"""

import argparse
import collections
from concurrent import futures
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterable, Iterator

import tqdm

from data_pipelines import readers
from data_pipelines import records
from data_pipelines import sampling
from data_pipelines import shards
from vdit_jax import atomic_dir, errors

VIDEOS_PER_SHARD = 64

_log = logging.getLogger(__name__)


class BuildError(errors.UserError):
  """A build that cannot proceed: an existing target, a bad video, bad arguments."""


@dataclasses.dataclass(frozen=True)
class _Task:
  dataset: str
  raw_root: str
  split: str
  video_id: str


@dataclasses.dataclass(frozen=True)
class EncodedVideo:
  """A worker's result: the record bytes and its counts, or the error that stopped it."""
  video_id: str
  data: bytes | None = None
  num_expressions: int = 0
  num_frames: int = 0
  anchors: sampling.AnchorCounts = sampling.AnchorCounts()
  error: str | None = None


def _read_and_encode(task: _Task) -> EncodedVideo:
  """Reads and encodes one video; runs in the worker processes (hence module level)."""
  try:
    record = readers.get_reader(task.dataset).read_video(task.raw_root, task.split,
                                                         task.video_id)
    data = records.encode(record)
    anchors = sampling.AnchorCounts.of(record)
  except Exception as e:  # pylint: disable=broad-except  (reported or skipped by the caller)
    return EncodedVideo(task.video_id, error=f"{type(e).__name__}: {e}")
  return EncodedVideo(task.video_id, data, len(record.expressions), len(record.frames), anchors)


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
  """fn over items in order, on `workers` spawned processes with a bounded backlog.

  A worker that dies (or fails to import) raises BrokenProcessPool instead of hanging.
  """
  if workers == 1:
    yield from map(fn, items)
    return
  executor = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
  try:
    pending = collections.deque()
    for item in items:
      pending.append(executor.submit(fn, item))
      if len(pending) >= 2 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    executor.shutdown(cancel_futures=True)


def read_videos(dataset: str, raw_root: str, split: str, video_ids: list[str], *, workers: int,
                skip_bad_records: bool, skipped: list[dict]) -> Iterator[EncodedVideo | None]:
  """Reads and encodes every video, in order, on `workers` spawned processes.

  Yields each video's EncodedVideo; a video that fails raises BuildError naming it, or with
  `skip_bad_records` is logged, appended to `skipped` ({"video_id", "error"}) and yields None.
  """
  name = f"{dataset}/{split}"
  tasks = [_Task(dataset, raw_root, split, v) for v in video_ids]
  # closing() ends the worker pool at once when a bad video stops the build.
  with contextlib.closing(_ordered_map(_read_and_encode, tasks, workers)) as results, \
      tqdm.tqdm(total=len(tasks), unit="video", desc=name, dynamic_ncols=True) as progress:
    for result in results:
      progress.update()
      if result.error is None:
        yield result
        continue
      if not skip_bad_records:
        raise BuildError(f"{name} video {result.video_id!r} failed: "
                         f"{result.error} (pass --skip_bad_records to skip such videos)")
      _log.warning("%s: skipping video %r: %s", name, result.video_id, result.error)
      skipped.append({"video_id": result.video_id, "error": result.error})
      yield None


def list_videos(dataset: str, raw_root: str, split: str) -> list[str]:
  """The sorted video ids of a split of the raw dataset; none at all is a BuildError."""
  if not os.path.isdir(raw_root):
    raise BuildError(f"{raw_root}: no such directory (the raw {dataset} dataset)")
  video_ids = sorted(readers.get_reader(dataset).list_videos(raw_root, split))
  if not video_ids:
    raise BuildError(f"{dataset}/{split}: no videos under {raw_root}")
  return video_ids


def _write_shards(directory: str, dataset: str, raw_root: str, split: str, video_ids: list[str],
                  num_shards: int, fmt: str, skip_bad_records: bool, workers: int) -> dict:
  """Writes the shards of the (sorted) videos into `directory`; returns the dataset_info dict."""
  bounds = [k * len(video_ids) // num_shards for k in range(num_shards + 1)]
  counts = collections.Counter()
  anchors = sampling.AnchorCounts()
  skipped, shard_infos = [], []
  videos = read_videos(dataset, raw_root, split, video_ids, workers=workers,
                       skip_bad_records=skip_bad_records, skipped=skipped)
  with contextlib.closing(videos):
    for k in range(num_shards):
      path = os.path.join(directory, shards.shard_name(k, num_shards, fmt))
      with shards.ShardWriter(path, fmt) as writer:
        for _ in range(bounds[k], bounds[k + 1]):
          result = next(videos)
          if result is None:
            continue
          writer.write(result.data)
          counts.update(num_videos=1, num_expressions=result.num_expressions,
                        num_frames=result.num_frames)
          anchors += result.anchors
      shard_infos.append(dataclasses.asdict(writer.info))
  if not counts["num_videos"]:
    raise BuildError(f"every one of the {len(video_ids)} videos failed; nothing to write")
  return {
      "info_version": shards.INFO_VERSION, "dataset": dataset, "split": split, "format": fmt,
      "record_version": records.RECORD_VERSION,
      "num_videos": counts["num_videos"], "num_expressions": counts["num_expressions"],
      "num_frames": counts["num_frames"], "num_skipped": len(skipped), "skipped": skipped,
      "expressions_by_anchor_frames": anchors.to_json(),
      "feature_spec": records.feature_spec_json(), "shards": shard_infos,
  }


def _check_common(workers: int, num_shards: int | None) -> None:
  if workers < 1:
    raise BuildError(f"--workers must be >= 1, got {workers}")
  if num_shards is not None and num_shards < 1:
    raise BuildError(f"--num_shards must be >= 1, got {num_shards}")


def _refuse_existing(target: str, overwrite: bool) -> None:
  if os.path.exists(target) and not overwrite:
    raise BuildError(f"{target} already exists; pass --overwrite to replace it")


def build(dataset: str, raw_root: str, split: str, out_root: str, *,
          num_shards: int | None = None, workers: int = 1, fmt: str = "tfrecord",
          overwrite: bool = False, skip_bad_records: bool = False) -> dict:
  """Builds `<out_root>/<split>/` from the raw dataset; returns its dataset_info dict."""
  if fmt not in shards.FORMATS:
    raise BuildError(f"unknown format {fmt!r}, expected one of {shards.FORMATS}")
  _check_common(workers, num_shards)
  target = shards.split_dir(out_root, split)
  _refuse_existing(target, overwrite)
  video_ids = list_videos(dataset, raw_root, split)
  num_shards = num_shards or math.ceil(len(video_ids) / VIDEOS_PER_SHARD)
  if num_shards > len(video_ids):
    raise BuildError(f"--num_shards must be in [1, {len(video_ids)}] (the number of videos), "
                     f"got {num_shards}")
  with atomic_dir.atomic_directory(target, overwrite=overwrite) as tmp:
    info = _write_shards(tmp, dataset, raw_root, split, video_ids, num_shards, fmt,
                         skip_bad_records, workers)
    shards.write_info(tmp, info)
  _log.info("wrote %d videos (%d skipped) in %d shards to %s", info["num_videos"],
            info["num_skipped"], num_shards, target)
  return info


def build_tfds(dataset: str, raw_root: str, out_root: str, *, num_shards: int | None = None,
               workers: int = 1, overwrite: bool = False,
               skip_bad_records: bool = False) -> list[str]:
  """Prepares every split of the raw dataset as a TFDS ArrayRecord dataset in the TFDS data
  dir `out_root` (RefCOCO: one dataset per subset); returns their directories."""
  from data_pipelines import tfds_builders  # Deferred: tensorflow-datasets is an optional extra.
  _check_common(workers, num_shards)
  targets = {name: tfds_builders.dataset_dir(out_root, name)
             for name in tfds_builders.names(dataset)}
  for target in targets.values():
    _refuse_existing(target, overwrite)
  # Checked before TFDS starts, whose own errors come with its traceback.
  fewest = min(len(list_videos(dataset, raw_root, split))
               for split in readers.get_reader(dataset).SPLITS)
  if num_shards is not None and num_shards > fewest:
    raise BuildError(f"--num_shards must be in [1, {fewest}] (the videos of the smallest "
                     f"split), got {num_shards}")
  for name, target in targets.items():
    # TFDS prepares <data_dir>/<name>/<version>: in a scratch data dir beside the target, so
    # that the finished version directory replaces an existing one in one rename.
    os.makedirs(os.path.dirname(target), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.partial-",
                               dir=os.path.dirname(target))
    try:
      prepared = tfds_builders.prepare(name, raw_root, scratch, num_shards=num_shards,
                                       workers=workers, skip_bad_records=skip_bad_records)
      atomic_dir.replace_dir(prepared, target)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
    _log.info("wrote the TFDS dataset %s to %s", name, target)
  return list(targets.values())


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m data_pipelines.build",
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("--dataset", required=True, choices=sorted(readers.READERS))
  parser.add_argument("--raw", required=True, help="root of the raw dataset")
  parser.add_argument("--split", help="the split to build (not with --format tfds, which "
                      "builds them all)")
  parser.add_argument("--out", required=True,
                      help="the split is written to OUT/SPLIT; with --format tfds, the TFDS "
                      "data dir")
  parser.add_argument("--num_shards", type=int, default=None,
                      help=f"default: one per {VIDEOS_PER_SHARD} videos (tfds: by size)")
  parser.add_argument("--workers", type=int, default=1)
  parser.add_argument("--format", default="tfrecord", choices=shards.FORMATS + ("tfds",))
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--skip_bad_records", action="store_true")
  parser.add_argument("--verbose", action="store_true",
                      help="show the traceback of input errors too")
  args = parser.parse_args(argv)
  if args.format == "tfds" and args.split is not None:
    parser.error("--format tfds builds every split at once; drop --split")
  if args.format != "tfds" and args.split is None:
    parser.error("--split is required (except with --format tfds)")
  return args


def main(argv: list[str] | None = None) -> int:
  """Runs the command; returns the exit status (0 ok, 1 bad input, 2 usage)."""
  args = _parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  common = dict(num_shards=args.num_shards, workers=args.workers, overwrite=args.overwrite,
                skip_bad_records=args.skip_bad_records)

  def run():
    if args.format == "tfds":
      build_tfds(args.dataset, args.raw, args.out, **common)
    else:
      build(args.dataset, args.raw, args.split, args.out, fmt=args.format, **common)

  return errors.run_command(run, verbose=args.verbose)


if __name__ == "__main__":
  sys.exit(main())
