"""A training data source whose global batch at each step does not depend on the process
count, for the training tests: process p of n gets rows [p B/n, (p+1) B/n) of it, so two
processes can be checked against one. Examples are functions of their index alone.
"""

import hashlib

import grain
import numpy as np


class _ProcessRows(grain.transforms.MapWithIndex):
  """A global batch -> this process's rows; `poison(part)` from batch `poison_from` on."""

  def __init__(self, process_index: int, process_count: int, poison_from: int | None,
               poison):
    self._index, self._count = process_index, process_count
    self._poison_from, self._poison = poison_from, poison

  def map_with_index(self, index, batch):
    rows = len(batch["index"]) // self._count
    part = {k: v[self._index * rows:(self._index + 1) * rows] for k, v in batch.items()}
    if self._poison_from is not None and index >= self._poison_from:
      part = self._poison(part)
    return part


def digest(batch) -> str:
  """sha256 of every entry of a batch, in key order."""
  return hashlib.sha256(b"".join(np.ascontiguousarray(batch[k]).tobytes()
                                 for k in sorted(batch))).hexdigest()


class Recording(grain.DatasetIterator):
  """Appends the digest of every batch it yields to a file."""

  def __init__(self, parent: grain.DatasetIterator, path: str):
    super().__init__(parent)
    self._path = path

  def __next__(self):
    batch = next(self._parent)
    with open(self._path, "a", encoding="utf-8") as f:
      f.write(digest(batch) + "\n")
    return batch

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


def make_data(process_index: int, process_count: int, *, example: grain.transforms.Map,
              batch_size: int, seed: int, record: str | None = None,
              poison_from: int | None = None, poison=None) -> grain.DatasetIterator:
  """This process's rows of shuffled global batches of `example(index)` (each with an
  "index" entry); every batch digest appended to `record`; batches from `poison_from` on
  passed through `poison`."""
  ds = (grain.MapDataset.range(100_000).shuffle(seed=seed).map(example)
        .batch(batch_size, drop_remainder=True)
        .map_with_index(_ProcessRows(process_index, process_count, poison_from, poison)))
  iterator = iter(ds.to_iter_dataset())
  return Recording(iterator, record) if record else iterator
