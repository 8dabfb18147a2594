"""What config.data.skip_bad_records skips, and the count of what it skipped.

A corrupt record, a frame or mask that does not decode, an anchor the video lacks: each
raises an error naming the shard, record and frame. With skip_bad_records the stage that
hit it drops that unit ("records", "clips" or "shards"), counts it in the process that
decodes, and logs a warning with the running count.
"""

import collections
from typing import Callable, TypeVar

from absl import logging

from data_pipelines import decoding
from data_pipelines import raw_io
from data_pipelines import records
from data_pipelines import sampling
from data_pipelines import shards

# The errors that mean "this input is bad", as opposed to a bug.
ERRORS = (decoding.ClipError, records.RecordError, shards.ShardError, raw_io.RawDataError,
          sampling.SampleError)

_SKIPPED = collections.Counter()

T = TypeVar("T")


def skipped_counts() -> dict[str, int]:
  """What skip_bad_records skipped in this process: {"records": n, "clips": n, "shards": n}.

  Counted in the process that decodes: with worker_count > 0 that is a grain worker, so
  this process sees only worker_count=0 runs; the logged warnings are the record.
  """
  return dict(_SKIPPED)


def skip(kind: str, error: Exception) -> None:
  """Counts and logs one skipped unit of `kind` ("records", "clips" or "shards")."""
  _SKIPPED[kind] += 1
  logging.warning("skipping a bad %s (%d so far): %s", kind[:-1], _SKIPPED[kind], error)


def call_or_skip(kind: str, skip_bad: bool, function: Callable[..., T], *args) -> T | None:
  """function(*args); on bad input None (counted and logged) if `skip_bad`, else the error."""
  try:
    return function(*args)
  except ERRORS as e:
    if not skip_bad:
      raise
    skip(kind, e)
    return None
