"""The TFDS builders (data_pipelines/tfds_builders.py) over every dataset's synthetic twin: built
without TensorFlow, read back through tfds.data_source as the records the project's shards
hold, and fed through the train and eval pipelines batch for batch as the project's ArrayRecord
shards are."""

import dataclasses
import importlib
import itertools
import json
import os
import pickle
import re
import shutil
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from tensorflow_datasets.proto import tf_example_pb2  # noqa: E402

import data_pipelines  # noqa: E402
from configs import a2d as a2d_config  # noqa: E402
from configs import davis as davis_config  # noqa: E402
from configs import jhmdb as jhmdb_config  # noqa: E402
from configs import refcoco as refcoco_config  # noqa: E402
from configs import ytvos as ytvos_config  # noqa: E402
from data_pipelines import build  # noqa: E402
from data_pipelines import pipeline  # noqa: E402
from data_pipelines import readers  # noqa: E402
from data_pipelines import records  # noqa: E402
from data_pipelines import sampling  # noqa: E402
from data_pipelines import shards  # noqa: E402
from data_pipelines import sources  # noqa: E402
from data_pipelines import synthetic  # noqa: E402
from data_pipelines import tfds_builders  # noqa: E402  (also registers the builders with TFDS)
from vdit_jax import errors  # noqa: E402
from vdit_jax import preflight  # noqa: E402

# The catalog names the issue and the README promise (tfds.data_source("ref_youtube_vos", ...)).
TFDS_NAMES = {"ytvos": "ref_youtube_vos", "davis": "ref_davis17", "a2d": "a2d_sentences",
              "jhmdb": "jhmdb_sentences", "refcoco": "ref_coco_referformer"}
CONFIGS = {"ytvos": ytvos_config, "davis": davis_config, "a2d": a2d_config,
           "jhmdb": jhmdb_config, "refcoco": refcoco_config}
NUM_SHARDS = 2
VERSION = "1.1.0"  # The version directory the README names.


def _tfds_split(dataset, split):
  """(TFDS name, split) of a reader split, written out: RefCOCO's subsets are configs."""
  if dataset == "refcoco":
    subset, name = split.split("/")
    return f"{TFDS_NAMES[dataset]}/{subset}", name
  return TFDS_NAMES[dataset], split


@dataclasses.dataclass(frozen=True)
class Twin:
  raw: str
  shards_dir: str


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Every twin built twice with 2 shards a split: the TFDS dataset (through the build
  command) and the project's ArrayRecord shards of every split. Also says whether the TFDS
  builds imported TensorFlow."""
  root = tmp_path_factory.mktemp("tfds")
  tfds_dir = str(root / "tfds")
  twins = {}
  tensorflow_before = "tensorflow" in sys.modules  # Where installed, other tests import it.
  for dataset in synthetic.DATASETS:
    twin = Twin(str(root / "raw" / dataset), str(root / "shards" / dataset))
    synthetic.write(dataset, twin.raw, num_videos=2, num_frames=4)
    assert build.main(["--dataset", dataset, "--raw", twin.raw, "--out", tfds_dir,
                       "--format", "tfds", "--num_shards", str(NUM_SHARDS)]) == 0
    twins[dataset] = twin
  imported_tensorflow = not tensorflow_before and "tensorflow" in sys.modules
  for dataset, twin in twins.items():
    for split in readers.get_reader(dataset).SPLITS:
      build.build(dataset, twin.raw, split, twin.shards_dir, num_shards=NUM_SHARDS,
                  fmt="array_record")
  return tfds_dir, twins, imported_tensorflow


def _project_records(twin, split):
  return list(shards.ArrayRecordSource(shards.list_shards(twin.shards_dir, split)))


def test_built_without_tensorflow_as_catalog_entries(built):
  tfds_dir, twins, imported_tensorflow = built
  assert not imported_tensorflow
  assert sorted(os.listdir(tfds_dir)) == sorted(TFDS_NAMES.values())  # nothing else left
  for dataset, twin in twins.items():
    reader = readers.get_reader(dataset)
    by_name = {}
    for split in reader.SPLITS:
      name, tfds_split = _tfds_split(dataset, split)
      by_name.setdefault(name, {})[tfds_split] = len(reader.list_videos(twin.raw, split))
    for name, num_examples in by_name.items():
      builder = tfds.builder(name, data_dir=tfds_dir)
      info = builder.info
      assert builder.is_prepared() and info.file_format.value == "array_record"
      assert {s: info.splits[s].num_examples for s in info.splits} == num_examples
      assert {info.splits[s].num_shards for s in info.splits} == {NUM_SHARDS}
      assert list(info.features) == list(records.FEATURE_SPEC)
      assert info.metadata["skipped"] == {s: [] for s in num_examples}
      assert sorted(info.metadata["expressions_by_anchor_frames"]) == sorted(num_examples)
      assert info.description and info.citation.startswith("@") and info.homepage
      assert "manual dir" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS


@pytest.mark.parametrize("dataset", synthetic.DATASETS)
def test_data_source_reads_the_records_of_the_project_shards(built, dataset):
  """The decoded TFDS examples hold every feature of the project's tf.train.Example records
  (parsed with TFDS's own Example proto); the raw TFDS records decode to the reader's
  VideoRecords."""
  tfds_dir, twins, _ = built
  twin, reader = twins[dataset], readers.get_reader(dataset)
  for split in reader.SPLITS:
    name, tfds_split = _tfds_split(dataset, split)
    project = _project_records(twin, split)
    decoded = tfds.data_source(name, split=tfds_split, data_dir=tfds_dir)
    assert len(decoded) == len(project)
    for i, data in enumerate(project):
      features = tf_example_pb2.Example.FromString(data).features.feature
      example = decoded[i]
      assert sorted(example) == sorted(features)
      for key, feature in features.items():
        want = list(getattr(feature, feature.WhichOneof("kind")).value)
        got = example[key] if isinstance(example[key], list) else [example[key]]
        assert got == want, (name, tfds_split, i, key)
    raw = tfds.data_source(name, split=tfds_split, data_dir=tfds_dir,
                           deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    expected = [reader.read_video(twin.raw, split, v)
                for v in sorted(reader.list_videos(twin.raw, split))]
    assert [records.decode(raw[i]) for i in range(len(raw))] == expected


def _config(dataset, twin, tfds_dir, fmt):
  config = CONFIGS[dataset].get_config("tiny")
  config.data.update(shards_dir=twin.shards_dir, tfds_dir=tfds_dir, format=fmt,
                     worker_count=0)
  if "batch_size" in config.data:  # A trained dataset.
    config.data.update(batch_size=2, shuffle_window=8)
  return config


def _assert_same(a, b):
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("dataset", synthetic.DATASETS)
def test_pipelines_over_tfds_equal_the_array_record_shards(built, dataset):
  tfds_dir, twins, _ = built
  configs = {fmt: _config(dataset, twins[dataset], tfds_dir, fmt)
             for fmt in ("array_record", "tfds")}
  if "split" in configs["tfds"].data:  # A trained dataset.
    batches = {}
    for fmt, config in configs.items():
      it = pipeline.make_train_iter(config, 0, 1)
      batches[fmt] = [next(it) for _ in range(2)]
      it.close()
    _assert_same(batches["array_record"], batches["tfds"])
  windows = {fmt: list(itertools.islice(pipeline.make_eval_iter(config), 6))
             for fmt, config in configs.items()}
  _assert_same(windows["array_record"], windows["tfds"])


def test_each_process_reads_what_the_project_shards_give_it(built):
  tfds_dir, twins, _ = built
  twin = twins["ytvos"]
  paths = shards.list_shards(twin.shards_dir, "train")
  for index in range(2):
    # Pickled as grain hands it to its worker processes.
    source = pickle.loads(pickle.dumps(sources.TfdsSource(tfds_dir, "ytvos", ("train",), index,
                                                          2)))
    mine = shards.ArrayRecordSource(shards.process_shards(paths, index, 2))
    assert len(source) == len(mine) == 1
    assert records.decode(source[0]) == records.decode(mine[0])
    assert source.where(0) == f"TFDS ref_youtube_vos split train in {tfds_dir} record {index}"
  configs = {fmt: _config("ytvos", twin, tfds_dir, fmt) for fmt in ("array_record", "tfds")}
  for config in configs.values():
    config.data.batch_size = 4  # 2 per process
  firsts = {}
  for fmt, config in configs.items():
    it = pipeline.make_train_iter(config, 1, 2)
    firsts[fmt] = [next(it)]
    it.close()
  _assert_same(firsts["array_record"], firsts["tfds"])
  with pytest.raises(ValueError, match="2 shards cannot feed 3 processes: rebuild with "
                                       "--num_shards >= 3"):
    sources.TfdsSource(tfds_dir, "ytvos", ("train",), 0, 3)


@pytest.mark.parametrize("dataset", ["ytvos", "a2d", "refcoco"])
def test_sample_counts_from_the_tfds_metadata(built, dataset):
  """The count from the TFDS metadata equals the project shards' and ClipSampling.samples of
  every TFDS record, at two clip lengths."""
  tfds_dir, twins, _ = built
  for num_frames in (3, 5):
    configs = {fmt: _config(dataset, twins[dataset], tfds_dir, fmt)
               for fmt in ("array_record", "tfds")}
    data = configs["tfds"].data
    data.sampling.num_frames = num_frames
    configs["array_record"].data.sampling.num_frames = num_frames
    clip_sampling = sampling.ClipSampling(**data.sampling)
    iterated = 0
    for split in [f"{s}/{data.split}" for s in data.subsets] or [data.split]:
      source = tfds_builders.raw_data_source(tfds_dir, dataset, split)
      iterated += sum(len(clip_sampling.samples(records.decode(source[i])))
                      for i in range(len(source)))
    assert {fmt: pipeline.train_sample_count(c) for fmt, c in configs.items()} == {
        "array_record": iterated, "tfds": iterated}


def test_an_older_tfds_version_names_the_build_command(built, tmp_path):
  tfds_dir, twins, _ = built
  old = tmp_path / "tfds"
  shutil.copytree(tfds_builders.dataset_dir(tfds_dir, "ref_youtube_vos"),
                  old / "ref_youtube_vos" / "1.0.0")
  config = _config("ytvos", twins["ytvos"], str(old), "tfds")
  command = f"python -m data_pipelines.build --dataset ytvos --raw RAW --out {old} --format tfds"
  with pytest.raises(errors.UserError, match=re.escape(command)):
    pipeline.train_sample_count(config)


def _files(directory):
  return {name: os.path.getsize(os.path.join(directory, name))
          for name in sorted(os.listdir(directory))}


def test_build_refuses_overwrites_atomically_and_skips_bad_videos(built, tmp_path, capsys):
  _, twins, _ = built
  raw, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
  shutil.copytree(twins["ytvos"].raw, raw)
  target = tfds_builders.dataset_dir(out, "ref_youtube_vos")
  args = ["--dataset", "ytvos", "--raw", raw, "--out", out, "--format", "tfds"]
  assert build.main(args) == 0
  before = _files(target)
  capsys.readouterr()
  assert build.main(args) == 1
  assert capsys.readouterr().err == (f"error: {target} already exists; pass --overwrite to "
                                     "replace it\n")
  assert build.main(args + ["--overwrite", "--num_shards", "3"]) == 1
  assert capsys.readouterr().err == ("error: --num_shards must be in [1, 2] (the videos of the "
                                     "smallest split), got 3\n")
  with pytest.raises(SystemExit):
    build.main(args + ["--split", "train"])
  assert "--format tfds builds every split at once; drop --split" in capsys.readouterr().err

  train = sorted(readers.get_reader("ytvos").list_videos(raw, "train"))
  frames = os.path.join(raw, "train", "JPEGImages", train[1])
  with open(os.path.join(frames, sorted(os.listdir(frames))[0]), "r+b") as f:
    f.truncate(50)
  with pytest.raises(build.BuildError, match=f"video '{train[1]}' failed"):
    build.build_tfds("ytvos", raw, out, overwrite=True)
  assert _files(target) == before  # a failed rebuild leaves the dataset as it was
  assert os.listdir(os.path.dirname(target)) == [VERSION]  # and no scratch directory

  assert build.main(args + ["--overwrite", "--skip_bad_records"]) == 0
  builder = tfds.builder("ref_youtube_vos", data_dir=out)
  assert builder.info.splits["train"].num_examples == 1
  with open(os.path.join(target, "metadata.json"), encoding="utf-8") as f:
    skipped = json.load(f)["skipped"]
  assert [s["video_id"] for s in skipped["train"]] == [train[1]]
  assert skipped["valid"] == skipped["test"] == []
  source = tfds.data_source("ref_youtube_vos", split="train", data_dir=out,
                            deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  assert records.decode(source[0]).video_id == train[0]


def test_a_missing_tfds_dataset_names_the_command_that_builds_it(built, tmp_path):
  tfds_dir, twins, _ = built
  config = _config("ytvos", twins["ytvos"], str(tmp_path / "none"), "tfds")
  command = (f"python -m data_pipelines.build --dataset ytvos --raw RAW --out "
             f"{tmp_path / 'none'} --format tfds")
  with pytest.raises(errors.UserError, match=re.escape(command)):
    pipeline.make_eval_iter(config)
  (need,) = preflight.shards(config, "train")
  assert need.path == str(tmp_path / "none" / "ref_youtube_vos" / VERSION / "dataset_info.json")
  assert need.command.endswith(f"--out {tmp_path / 'none'} --format tfds")
  assert not need.exists()
  config = _config("refcoco", twins["refcoco"], tfds_dir, "tfds")
  assert [n.path for n in preflight.shards(config, "train")] == [os.path.join(
      tfds_dir, "ref_coco_referformer", "refcoco", VERSION, "dataset_info.json")]
  assert all(n.exists() for n in preflight.shards(config, "train"))


def test_without_tensorflow_datasets_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  monkeypatch.delitem(sys.modules, "data_pipelines.tfds_builders")
  monkeypatch.delattr(data_pipelines, "tfds_builders")
  hint = "install it with pip install -e '.[tfds]'"
  with pytest.raises(errors.UserError, match=re.escape(hint)):
    importlib.import_module("data_pipelines.tfds_builders")
  assert build.main(["--dataset", "jhmdb", "--raw", str(tmp_path), "--out", str(tmp_path),
                     "--format", "tfds"]) == 1
  assert capsys.readouterr().err.startswith("error: TFDS datasets need tensorflow-datasets")
