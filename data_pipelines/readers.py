"""The raw dataset readers by name, for the shard-building CLI.

Each reader module has the same API:
  SPLITS: the split names it knows;
  list_videos(root, split) -> list[str]: the split's video ids, sorted;
  read_video(root, split, video_id) -> raw.VideoRecord.
Reading errors raise raw_io.RawDataError (a ValueError) naming the file or video at fault.
"""

import types

from data_pipelines import a2d
from data_pipelines import davis
from data_pipelines import jhmdb
from data_pipelines import refcoco
from data_pipelines import ytvos

READERS = {
    "ytvos": ytvos,
    "davis": davis,
    "a2d": a2d,
    "jhmdb": jhmdb,
    "refcoco": refcoco,
}


def get_reader(name: str) -> types.ModuleType:
  """The reader module of dataset `name` ("ytvos", "davis", "a2d", "jhmdb", "refcoco")."""
  if name not in READERS:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(READERS)}")
  return READERS[name]
