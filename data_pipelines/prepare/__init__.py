"""Derives, from the files a dataset's owners release, the files its reader needs.

  python -m data_pipelines.prepare --dataset a2d|davis|refcoco --raw DIR \
      [--strict | --skip_mismatched]

  a2d      MTTR's sample lists and COCO ground truth from the A2D-Sentences release
           (data_pipelines/prepare/a2d.py);
  davis    ReferFormer's YTVOS-style Ref-DAVIS17 layout from DAVIS 2017 and the four
           annotator files (data_pipelines/prepare/davis.py);
  refcoco  nothing to write (the reader reads the REFER release); checks it
           (data_pipelines/prepare/refcoco.py).

It writes only what is missing, next to the raw data, and prints what it read, derived and
wrote; a file that exists is checked against the derivation, never overwritten, so a second
run changes nothing. Inconsistent input stops it before anything is written (--strict, the
default) or, with --skip_mismatched, is left out and counted (data_pipelines/prepare/plan.py).
JHMDB-Sentences needs no preparation: its reader uses MTTR's fixed sample list.
"""

import argparse

from data_pipelines.prepare import a2d
from data_pipelines.prepare import davis
from data_pipelines.prepare import plan as plan_lib
from data_pipelines.prepare import refcoco
from vdit_jax import errors

PLANNERS = {"a2d": a2d.plan, "davis": davis.plan, "refcoco": refcoco.plan}


def prepare(dataset: str, raw_root: str, *, skip_mismatched: bool = False) -> dict[str, str]:
  """Prepares `dataset` under `raw_root`; returns {output path: "wrote" | "kept" | "differs"}.

  Raises:
    plan_lib.PrepareError: the release is incomplete, or inconsistent and not
      `skip_mismatched`.
  """
  if dataset not in PLANNERS:
    raise plan_lib.PrepareError(f"unknown dataset {dataset!r}; known: {sorted(PLANNERS)}")
  return plan_lib.apply(PLANNERS[dataset](raw_root), skip_mismatched=skip_mismatched)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_pipelines.prepare",
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("--dataset", required=True, choices=sorted(PLANNERS))
  parser.add_argument("--raw", required=True, help="root of the raw dataset")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--strict", action="store_true",
                    help="stop at any inconsistency, writing nothing (the default)")
  mode.add_argument("--skip_mismatched", action="store_true",
                    help="leave inconsistent items out of what is written, and count them")
  parser.add_argument("--verbose", action="store_true", help="tracebacks for errors")
  args = parser.parse_args(argv)

  def run() -> None:
    prepare(args.dataset, args.raw, skip_mismatched=args.skip_mismatched)

  return errors.run_command(run, verbose=args.verbose)
