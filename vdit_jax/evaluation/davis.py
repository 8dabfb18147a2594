"""Scores results folders in the DAVIS layout with the DAVIS 2017 protocol (see davis_protocol).

  python -m vdit_jax.evaluation.davis --davis_root DIR --results DIR [--results DIR ...]
      [--task unsupervised|semi-supervised] [--set val] [--out DIR] [--verbose]

Reads the sequences of `<davis_root>/ImageSets/2017/<set>.txt`, the ground truth of
`<davis_root>/Annotations_unsupervised/480p/<seq>/*.png` (unsupervised, the Ref-DAVIS17 task)
or `Annotations/480p` (semi-supervised), and one single-channel id PNG per ground-truth frame,
`<results>/<seq>/<frame>.png` (a palette or grayscale image whose pixel values are object
ids, 0 = background; JPEGImages is not needed). Writes `global_results-<set>.csv` and
`per-sequence_results-<set>.csv` with the DAVIS toolkit's columns and prints both tables.

Unlike the toolkit's `evaluation_method.py` (and VD-IT `eval_davis.py:28-35`), existing CSVs
are never reused: every run recomputes and overwrites them. A missing sequence or frame, an
RGB image, a size other than the ground truth's, or a binary mask saved as 0/255 (which the
toolkit silently reads as object id 255) is refused with a message naming the files.

Several `--results` (Ref-DAVIS17's 4 annotator runs) are scored one by one; each run's tables
go to `<out>/<basename of its results folder>/` and their mean, the figure Ref-DAVIS17
reports, to `<out>/`. `--out` defaults to the results folder for one run and is required for
several.
"""

import argparse
import csv
import glob
import os
import sys
import tempfile
from typing import Sequence

import numpy as np
import tqdm
from PIL import Image

from vdit_jax import errors
from vdit_jax.evaluation import davis_protocol
from vdit_jax.evaluation import text_tables

_MAX_LISTED = 10


def annotation_dir(davis_root: str, task: str) -> str:
  """The ground-truth folder the toolkit scores `task` against (VD-IT davis2017/davis.py:31-32)."""
  folder = "Annotations" if task == "semi-supervised" else "Annotations_unsupervised"
  return os.path.join(davis_root, folder, "480p")


def read_sequences(davis_root: str, image_set: str) -> list[str]:
  """The sequence names listed in `<davis_root>/ImageSets/2017/<image_set>.txt`."""
  path = os.path.join(davis_root, "ImageSets", "2017", f"{image_set}.txt")
  if not os.path.isfile(path):
    raise errors.UserError(f"{path} not found: --davis_root must be the DAVIS folder (with "
                           f"ImageSets/2017/) and --set one of its image sets")
  with open(path, encoding="utf-8") as f:
    sequences = [line.strip() for line in f if line.strip()]
  if not sequences:
    raise errors.UserError(f"{path} lists no sequences")
  return sequences


def _ground_truth_frames(gt_dir: str, sequences: Sequence[str],
                         task: str) -> dict[str, list[str]]:
  """Sorted frame stems of every sequence's ground-truth PNGs."""
  if not os.path.isdir(gt_dir):
    raise errors.UserError(f"{gt_dir} not found: --task {task} scores against it (the DAVIS "
                           f"2017 {task} trainval 480p annotations)")
  frames = {seq: sorted(os.path.splitext(os.path.basename(p))[0]
                        for p in glob.glob(os.path.join(gt_dir, glob.escape(seq), "*.png")))
            for seq in sequences}
  empty = [seq for seq, stems in frames.items() if not stems]
  if empty:
    raise errors.UserError(f"{gt_dir}: no ground-truth PNGs for {_listing(empty)}")
  return frames


def _listing(names: Sequence[str]) -> str:
  shown = ", ".join(names[:_MAX_LISTED])
  more = len(names) - _MAX_LISTED
  return f"{shown} and {more} more" if more > 0 else shown


def _check_results_complete(results: str, frames: dict[str, list[str]]) -> None:
  """Every ground-truth frame has its result PNG, or a UserError names the missing ones."""
  if not os.path.isdir(results):
    raise errors.UserError(f"results folder {results} not found")
  missing_sequences = [seq for seq in frames if not os.path.isdir(os.path.join(results, seq))]
  if missing_sequences:
    raise errors.UserError(f"{results} lacks {len(missing_sequences)} of the "
                           f"{len(frames)} sequences: {_listing(missing_sequences)}")
  missing = [f"{seq}/{stem}.png" for seq, stems in frames.items() for stem in stems
             if not os.path.isfile(os.path.join(results, seq, f"{stem}.png"))]
  if missing:
    raise errors.UserError(f"{results} lacks {len(missing)} result frames (one PNG per "
                           f"ground-truth frame): {_listing(missing)}")


def _read_ids(path: str) -> np.ndarray:
  """A single-channel id PNG as (H, W) uint16."""
  try:
    with Image.open(path) as image:
      ids = np.asarray(image)
  except OSError as e:
    raise errors.UserError(f"{path}: not a readable PNG ({e})") from None
  if ids.ndim != 2:
    raise errors.UserError(f"{path}: {ids.shape[-1]}-channel image; DAVIS masks are "
                           "single-channel id maps (palette or grayscale PNG, pixel = object id)")
  return ids.astype(np.uint16)


def _read_result(path: str, shape: tuple[int, ...]) -> np.ndarray:
  ids = _read_ids(path)
  if ids.shape != shape:
    raise errors.UserError(f"{path}: size {ids.shape[1]}x{ids.shape[0]} differs from the "
                           f"ground truth's {shape[1]}x{shape[0]} (the protocol never resizes)")
  if ids.max() == davis_protocol.VOID_ID and not np.any((ids != 0) & (ids != 255)):
    raise errors.UserError(
        f"{path}: a binary mask saved as 0/255; DAVIS results are id maps (0 = background, "
        "1, 2, ... = objects), and 255 would be read as object id 255. Save the object as id 1")
  return ids


def _read_stack(paths: Sequence[str], read) -> np.ndarray:
  frames = [read(p) for p in paths]
  shapes = {f.shape for f in frames}
  if len(shapes) > 1:
    raise errors.UserError(f"{os.path.dirname(paths[0])}: frames of different sizes {shapes}")
  return np.stack(frames)


def evaluate(davis_root: str, results: str, *, task: str = "unsupervised",
             image_set: str = "val", progress: bool = True,
             sequences: Sequence[str] | None = None) -> davis_protocol.DavisTables:
  """Scores one results folder; see the module docstring for the layouts.

  `sequences`, if given, scores only these sequences of the image set (a subset, e.g. during
  training); otherwise all of them.

  Raises:
    errors.UserError: a missing, unreadable or malformed ground-truth or result file.
  """
  if task not in davis_protocol.TASKS:
    raise errors.UserError(f"--task must be one of {davis_protocol.TASKS}, got {task!r}")
  gt_dir = annotation_dir(davis_root, task)
  listed = read_sequences(davis_root, image_set)
  if sequences is not None:
    unknown = sorted(set(sequences) - set(listed))
    if unknown:
      raise errors.UserError(f"sequences {_listing(unknown)} are not in the image set "
                             f"{image_set} of {davis_root}")
    listed = [seq for seq in listed if seq in set(sequences)]
  frames = _ground_truth_frames(gt_dir, listed, task)
  _check_results_complete(results, frames)
  objects = []
  for seq, stems in tqdm.tqdm(frames.items(), desc=f"DAVIS {task} {results}", unit="sequence",
                              disable=not progress, leave=False):
    gt_ids = _read_stack([os.path.join(gt_dir, seq, f"{s}.png") for s in stems], _read_ids)
    pred_ids = _read_stack([os.path.join(results, seq, f"{s}.png") for s in stems],
                           lambda p: _read_result(p, gt_ids.shape[1:]))
    objects += davis_protocol.score_sequence(seq, gt_ids, pred_ids, task)
  return davis_protocol.pooled_tables(objects)


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
  """Writes a CSV as the toolkit does (pandas, float_format "%.5f"), replacing `path` at once."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".csv.partial", newline="",
                                   delete=False) as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([v if isinstance(v, str) else f"{v:.5f}" for v in row] for row in rows)
  os.replace(f.name, path)


def write_tables(tables: davis_protocol.DavisTables, out_dir: str,
                 image_set: str = "val") -> tuple[str, str]:
  """Writes (and overwrites) the global and per-sequence CSVs; returns their paths."""
  global_path = os.path.join(out_dir, f"global_results-{image_set}.csv")
  sequence_path = os.path.join(out_dir, f"per-sequence_results-{image_set}.csv")
  _write_csv(global_path, davis_protocol.GLOBAL_COLUMNS,
             [[tables.global_row[c] for c in davis_protocol.GLOBAL_COLUMNS]])
  _write_csv(sequence_path, davis_protocol.SEQUENCE_COLUMNS, tables.per_object)
  return global_path, sequence_path


def format_tables(tables: davis_protocol.DavisTables, title: str,
                  per_sequence: bool = True) -> str:
  """The global table (and the per-sequence one) as printed text under `title`."""
  text = [f"---------- Global results for {title} ----------",
          text_tables.text_table(davis_protocol.GLOBAL_COLUMNS,
                                 [[tables.global_row[c] for c in davis_protocol.GLOBAL_COLUMNS]])]
  if per_sequence:
    text += ["", f"---------- Per sequence results for {title} ----------",
             text_tables.text_table(davis_protocol.SEQUENCE_COLUMNS, tables.per_object)]
  return "\n".join(text)


def _run_dirs(results: Sequence[str], out: str | None) -> list[str]:
  """Where each run's tables go (see the module docstring)."""
  if len(results) == 1:
    return [out or results[0]]
  if out is None:
    raise errors.UserError("several --results need --out: each run's tables go to "
                           "<out>/<run folder name>/ and their mean to <out>/")
  names = [os.path.basename(os.path.normpath(r)) for r in results]
  if len(set(names)) < len(names):
    raise errors.UserError(f"--results folders need distinct names to be written under "
                           f"--out, got {names}")
  return [os.path.join(out, name) for name in names]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vdit_jax.evaluation.davis",
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("--davis_root", required=True, metavar="DIR",
                      help="the DAVIS folder (ImageSets/, Annotations_unsupervised/, ...)")
  parser.add_argument("--results", required=True, action="append", metavar="DIR",
                      help="a folder of <seq>/<frame>.png id maps; give it several times "
                           "(Ref-DAVIS17's 4 annotator runs) to also get their mean")
  parser.add_argument("--task", default="unsupervised", choices=davis_protocol.TASKS,
                      help="default: unsupervised, the Ref-DAVIS17 protocol")
  parser.add_argument("--set", default="val", dest="image_set", metavar="SET",
                      help="the image set, ImageSets/2017/<set>.txt (default: val)")
  parser.add_argument("--out", metavar="DIR", help="where the CSVs go (default: the results folder; "
                                    "required with several --results)")
  parser.add_argument("--verbose", action="store_true", help="tracebacks for bad input")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command; returns the exit status (0 ok, 1 bad input, 2 usage)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)

  def command() -> None:
    out_dirs = _run_dirs(args.results, args.out)
    runs = [evaluate(args.davis_root, results, task=args.task, image_set=args.image_set)
            for results in args.results]
    for results, tables, out_dir in zip(args.results, runs, out_dirs):
      paths = write_tables(tables, out_dir, args.image_set)
      print(format_tables(tables, f"{args.image_set} ({args.task}): {results}",
                          per_sequence=len(runs) == 1))
      print(f"wrote {paths[0]} and {paths[1]}\n")
    if len(runs) > 1:
      mean = davis_protocol.average_tables(runs)
      paths = write_tables(mean, args.out, args.image_set)
      print(format_tables(mean, f"{args.image_set} ({args.task}): mean of {len(runs)} runs"))
      print(f"wrote {paths[0]} and {paths[1]}")

  return errors.run_command(command, verbose=args.verbose)


if __name__ == "__main__":
  sys.exit(main())
