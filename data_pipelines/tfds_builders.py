"""The five datasets as TensorFlow Datasets builders: ArrayRecord files, no TensorFlow needed.

  python -m data_pipelines.build --dataset ytvos --raw RAW --out DIR --format tfds
  tfds.data_source("ref_youtube_vos", split="train", data_dir=DIR)   # after importing this

  --dataset  TFDS name                                          splits
  ytvos      ref_youtube_vos                                    train, valid, test
  davis      ref_davis17                                        train, valid
  a2d        a2d_sentences                                      train, test
  jhmdb      jhmdb_sentences                                    test
  refcoco    ref_coco_referformer/<partition>                   refcoco.PARTITIONS' splits

The `tfds build` command of tensorflow-datasets 4.9.10 imports TensorFlow at start-up; without
it, prepare a dataset with the build command above (atomic, with worker processes) or with
`tfds.builder(NAME, data_dir=DIR).download_and_prepare(download_config=
tfds.download.DownloadConfig(manual_dir=RAW))`.

The raw dataset is a manual download (each builder's MANUAL_DOWNLOAD_INSTRUCTIONS name its
layout), read by the project's reader of that dataset (`readers.py`). An example is one record
of `records.py`: the same features (names, kinds, values) as one `tf.train.Example` of the
project's shards, frames and masks kept as their encoded bytes (`tfds.features.Image` and
`Video` would need TensorFlow). So `records.decode` turns a raw TFDS record
(`tfds.data_source(..., deserialize_method=RAW_BYTES)`) into the very `VideoRecord` the reader
made, and the default decoding gives the features as numpy values (length-1 features as
scalars, text as bytes). Examples keep the reader's sorted video order (no TFDS shuffling), so
record i of a split is record i of the project's shards of that split.
"""

import os

from vdit_jax import errors


class MissingExtraError(errors.UserError, ImportError):
  """tensorflow-datasets, an optional extra, is not installed."""


try:
  import tensorflow_datasets as tfds
except ImportError as e:
  raise MissingExtraError(f"TFDS datasets need tensorflow-datasets ({e}); install it with "
                          "pip install -e '.[tfds]'") from e
import numpy as np

from data_pipelines import build
from data_pipelines import readers
from data_pipelines import refcoco
from data_pipelines import records
from data_pipelines import sampling

DATASET_VERSION = "1.1.0"

# What each records.FEATURE_SPEC feature holds, for the catalog.
_FEATURE_DOCS = {
    "version": "records.py RECORD_VERSION of the example's layout",
    "dataset": 'the project\'s dataset name ("ytvos", "davis", "a2d", "jhmdb", "refcoco")',
    "split": 'the split as the reader names it ("train", "refcoco+/val", ...)',
    "video_id": "the dataset's video id (RefCOCO: the id of the sentence's image entry)",
    "frame_format": '"jpeg" or "png"',
    "height": "frame height in pixels",
    "width": "frame width in pixels",
    "frame_names": "the name of every frame, in temporal order",
    "frames": "the stored JPEG / PNG file bytes of each frame, aligned with frame_names",
    "mask_frames": "the names of the annotated frames (repeated where overlapping objects "
                   "need several id maps)",
    "masks": "single-channel PNG id maps (pixel = object id, 0 = background), aligned with "
             "mask_frames",
    "mask_obj_ids": "the sorted non-zero object ids present in the masks",
    "exp_ids": "the id of each referring expression",
    "exp_texts": "each referring expression as written",
    "exp_obj_ids": "the object ids each expression refers to, concatenated",
    "exp_obj_row_splits": "expression e refers to exp_obj_ids[s[e]:s[e + 1]]",
    "meta_keys": "dataset-specific extras (e.g. category/<obj_id>), sorted",
    "meta_values": "the values of meta_keys, aligned with them",
}
_ENCODED_IMAGES = ("frames", "masks")  # Bytes features that are not UTF-8 text.


def _subset_and_split(reader_split: str) -> tuple[str, str]:
  """A reader's split "<subset>/<split>" (RefCOCO) is split <split> of the builder config
  <subset>; other splits ("", split)."""
  subset, _, split = reader_split.rpartition("/")
  return subset, split


def _value(name: str, doc: str | None = None) -> tfds.features.FeatureConnector:
  """One value of feature `name`: an int64, encoded image bytes or UTF-8 text."""
  if records.FEATURE_SPEC[name][0] == records.INT64:
    return tfds.features.Scalar(np.int64, doc=doc)
  if name in _ENCODED_IMAGES:
    return tfds.features.Tensor(shape=(), dtype=np.object_, doc=doc)
  return tfds.features.Text(doc=doc)


def features() -> tfds.features.FeaturesDict:
  """The features of every builder: records.FEATURE_SPEC, one TFDS feature each."""
  spec = {}
  for name, (_, length) in records.FEATURE_SPEC.items():
    doc = _FEATURE_DOCS[name]
    spec[name] = (_value(name, doc) if length == 1
                  else tfds.features.Sequence(_value(name), doc=doc))
  return tfds.features.FeaturesDict(spec)


def _example(data: bytes, where: str) -> dict:
  """The TFDS example of an encoded record: its feature values, length-1 ones as scalars."""
  values = records.parse(data, where)
  return {name: values[name][0] if length == 1 else values[name]
          for name, (_, length) in records.FEATURE_SPEC.items()}


class VideoRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder of one of the project's datasets; subclasses name it and describe it.

  Keyword arguments beyond TFDS's: `workers` spawned processes read and encode the videos
  (build.read_videos), and `skip_bad_records` leaves out (and lists in the metadata, under
  "skipped") a video that fails to read instead of failing the build. The metadata also
  holds each split's sampling.AnchorCounts, under "expressions_by_anchor_frames". The file
  format defaults to ArrayRecord, the one TFDS writes and reads at random without TensorFlow.
  """

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {
      "1.0.0": "Initial release: the records.py version 1 features.",
      "1.1.0": "metadata.json holds each split's sampling.AnchorCounts "
               "(\"expressions_by_anchor_frames\"), which counts training samples.",
  }
  DATASET = ""  # The reader's name (readers.READERS).
  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, *, workers: int = 1, skip_bad_records: bool = False,
               file_format: str | None = None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)
    self._workers, self._skip_bad_records = workers, skip_bad_records

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, features=features(),
        homepage=self.HOMEPAGE, citation=self.CITATION,
        disable_shuffling=True,  # Record i of a split is record i of the project's shards.
        metadata=tfds.core.MetadataDict(skipped={}, expressions_by_anchor_frames={}))

  def _splits(self) -> dict[str, str]:
    """TFDS split -> the reader's split, of this builder config's subset (RefCOCO)."""
    config = self.builder_config.name if self.builder_config else ""
    splits = {}
    for reader_split in readers.get_reader(self.DATASET).SPLITS:
      subset, split = _subset_and_split(reader_split)
      if subset == config:
        splits[split] = reader_split
    return splits

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    root = os.fspath(dl_manager.manual_dir)
    return {split: self._generate_examples(root, split, reader_split)
            for split, reader_split in self._splits().items()}

  def _generate_examples(self, root: str, split: str, reader_split: str):
    """(video id, example) of every video of the split, in the reader's sorted order; the
    split's skipped videos and AnchorCounts go into the metadata."""
    skipped = self.info.metadata["skipped"].setdefault(split, [])
    anchors = sampling.AnchorCounts()
    video_ids = build.list_videos(self.DATASET, root, reader_split)
    for video in build.read_videos(self.DATASET, root, reader_split, video_ids,
                                   workers=self._workers,
                                   skip_bad_records=self._skip_bad_records, skipped=skipped):
      if video is not None:
        anchors += video.anchors
        where = f"{self.DATASET}/{reader_split}/{video.video_id}"
        yield video.video_id, _example(video.data, where)
    self.info.metadata["expressions_by_anchor_frames"][split] = anchors.to_json()


_VIDEO_EXAMPLE = ("One example per video: its frames as the stored image bytes, its id-map "
                  "masks as PNG bytes, and its referring expressions with the object ids they "
                  "name (the features of data_pipelines/records.py).")


class RefYoutubeVos(VideoRecordBuilder):
  """Ref-YouTube-VOS (URVOS, ECCV 2020)."""

  DATASET = "ytvos"
  DESCRIPTION = (
      "Ref-YouTube-VOS: referring expressions for the objects of YouTube-VOS 2019 videos, "
      "masks every 5th frame. Splits: train (with masks); valid (the validation videos "
      "that are not test videos) and test, both without masks, scored on the challenge "
      "server. " + _VIDEO_EXAMPLE)
  HOMEPAGE = "https://youtube-vos.org/dataset/rvos/"
  CITATION = """@inproceedings{seo2020urvos,
  title={URVOS: Unified Referring Video Object Segmentation Network with a Large-Scale Benchmark},
  author={Seo, Seonguk and Lee, Joon-Young and Han, Bohyung},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2020}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Ref-YouTube-VOS release (train.zip, valid.zip, meta_expressions.zip; see
https://youtube-vos.org/dataset/rvos/) and unpack it into the manual dir:
  train/JPEGImages/<video>/<frame>.jpg
  train/Annotations/<video>/<frame>.png
  train/meta.json
  valid/JPEGImages/<video>/<frame>.jpg
  meta_expressions/{train,valid,test}/meta_expressions.json
"""


class RefDavis17(VideoRecordBuilder):
  """Ref-DAVIS17 (Khoreva et al., ACCV 2018)."""

  DATASET = "davis"
  DESCRIPTION = (
      "Ref-DAVIS17: DAVIS 2017 videos with two referring expressions per object, each "
      "written once from the first frame and once from the whole video (four per object), "
      "in the YTVOS-style layout ReferFormer converts them to; every frame has a mask. "
      + _VIDEO_EXAMPLE)
  HOMEPAGE = ("https://www.mpi-inf.mpg.de/departments/computer-vision-and-machine-learning/"
              "research/video-segmentation/video-object-segmentation-with-language-referring-"
              "expressions")
  CITATION = """@inproceedings{khoreva2018video,
  title={Video Object Segmentation with Language Referring Expressions},
  author={Khoreva, Anna and Rohrbach, Anna and Schiele, Bernt},
  booktitle={Asian Conference on Computer Vision (ACCV)},
  year={2018}
}
@article{pont2017davis,
  title={The 2017 DAVIS Challenge on Video Object Segmentation},
  author={Pont-Tuset, Jordi and Perazzi, Federico and Caelles, Sergi and Arbel{\\'a}ez, Pablo
          and Sorkine-Hornung, Alexander and Van Gool, Luc},
  journal={arXiv:1704.00675},
  year={2017}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download DAVIS 2017 trainval at 480p with Annotations_unsupervised
(https://davischallenge.org/davis2017/code.html) and the Ref-DAVIS17 expressions
(davis_text_annotations), then convert them with ReferFormer's
tools/data/convert_davis_to_ytvos.py (https://github.com/wjn922/ReferFormer). The manual dir
is the converted tree:
  {train,valid}/JPEGImages/<sequence>/<%05d>.jpg
  {train,valid}/Annotations/<sequence>/<%05d>.png
  {train,valid}/meta.json
  meta_expressions/{train,valid}/meta_expressions.json
"""


_ACTOR_ACTION_CITATION = """@inproceedings{gavrilyuk2018actor,
  title={Actor and Action Video Segmentation from a Sentence},
  author={Gavrilyuk, Kirill and Ghodrati, Amir and Li, Zhenyang and Snoek, Cees G. M.},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2018}
}"""
_ACTOR_ACTION_HOMEPAGE = "https://kgavrilyuk.github.io/publication/actor_action/"


class A2dSentences(VideoRecordBuilder):
  """A2D-Sentences (Gavrilyuk et al., CVPR 2018)."""

  DATASET = "a2d"
  DESCRIPTION = (
      "A2D-Sentences: sentences describing the actors of the A2D videos, in the single-frame "
      "sample protocol of MTTR: each sample is a sentence, an annotated frame and an actor "
      "instance. The mp4 clips are decoded once and every frame stored as a JPEG (quality "
      "95); the frame a sample is scored on is meta['frame/<exp_id>']. " + _VIDEO_EXAMPLE)
  HOMEPAGE = _ACTOR_ACTION_HOMEPAGE
  CITATION = _ACTOR_ACTION_CITATION + """
@inproceedings{xu2015can,
  title={Can Humans Fly? Action Understanding with Multiple Classes of Actors},
  author={Xu, Chenliang and Hsieh, Shao-Hang and Xiong, Caiming and Corso, Jason J.},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2015}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the A2D clips (https://web.eecs.umich.edu/~jjcorso/r/a2d/), the A2D-Sentences
instance masks (a2d_annotation_with_instances, from the homepage) and MTTR's single-frame
sample lists (https://github.com/mttr2021/MTTR, datasets/a2d_sentences), into the manual dir:
  Release/CLIPS320/<video>.mp4   (or Release/clips320H/)
  text_annotations/a2d_annotation_with_instances/<video>/<%05d>.h5
  a2d_sentences_single_frame_{train,test}_annotations.json
"""


class JhmdbSentences(VideoRecordBuilder):
  """JHMDB-Sentences (Gavrilyuk et al., CVPR 2018)."""

  DATASET = "jhmdb"
  DESCRIPTION = (
      "JHMDB-Sentences: one sentence per JHMDB video describing its actor, for evaluation "
      "only, in MTTR's sample protocol; masks are the JHMDB puppet masks of every frame, the "
      "frame a sample is scored on is meta['frame/<exp_id>']. " + _VIDEO_EXAMPLE)
  HOMEPAGE = _ACTOR_ACTION_HOMEPAGE
  CITATION = _ACTOR_ACTION_CITATION + """
@inproceedings{jhuang2013towards,
  title={Towards Understanding Action Recognition},
  author={Jhuang, Hueihan and Gall, Juergen and Zuffi, Silvia and Schmid, Cordelia and
          Black, Michael J.},
  booktitle={International Conference on Computer Vision (ICCV)},
  year={2013}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download JHMDB's Rename_Images and puppet_mask (http://jhmdb.is.tue.mpg.de/) and MTTR's
sample list (https://github.com/mttr2021/MTTR, datasets/jhmdb_sentences), into the manual dir:
  Rename_Images/<action>/<video>/<%05d>.png
  puppet_mask/<action>/<video>/puppet_mask.mat
  jhmdb_sentences_samples_metadata.json
"""


class RefCocoReferformer(VideoRecordBuilder):
  """RefCOCO, RefCOCO+ and RefCOCOg with masks, in ReferFormer's COCO-style conversion."""

  DATASET = "refcoco"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=subset, description=f"{subset} in ReferFormer's "
                              f"instances_{subset}_{{train,val}}.json")
      for subset in refcoco.PARTITIONS]
  DESCRIPTION = (
      "RefCOCO, RefCOCO+ and RefCOCOg (one builder config each): referring expressions for "
      "objects of COCO train2014 images, with the objects' COCO masks, in the form ReferFormer "
      "converts them to (one image entry per sentence). One example per sentence: a "
      "single-frame record whose frame is the COCO JPEG, with one id map (id 1 = the "
      "referred object) and the sentence as its one expression (the features of "
      "data_pipelines/records.py).")
  HOMEPAGE = "https://github.com/lichengunc/refer"
  CITATION = """@inproceedings{kazemzadeh2014referitgame,
  title={ReferItGame: Referring to Objects in Photographs of Natural Scenes},
  author={Kazemzadeh, Sahar and Ordonez, Vicente and Matten, Mark and Berg, Tamara},
  booktitle={Conference on Empirical Methods in Natural Language Processing (EMNLP)},
  pages={787--798},
  year={2014}
}
@inproceedings{yu2016modeling,
  title={Modeling Context in Referring Expressions},
  author={Yu, Licheng and Poirson, Patrick and Yang, Shan and Berg, Alexander C. and
          Berg, Tamara L.},
  booktitle={European Conference on Computer Vision (ECCV)},
  pages={69--85},
  year={2016}
}
@inproceedings{mao2016generation,
  title={Generation and Comprehension of Unambiguous Object Descriptions},
  author={Mao, Junhua and Huang, Jonathan and Toshev, Alexander and Camburu, Oana and
          Yuille, Alan and Murphy, Kevin},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2016}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download COCO's train2014 images (https://cocodataset.org) and the RefCOCO, RefCOCO+ and
RefCOCOg annotations (https://github.com/lichengunc/refer), and convert the annotations with
ReferFormer's tools/data/convert_refexp_to_coco.py (https://github.com/wjn922/ReferFormer).
The manual dir holds:
  coco/train2014/COCO_train2014_<image id>.jpg
  coco/<subset>/instances_<subset>_{train,val}.json   for subset in refcoco, refcoco+, refcocog
"""


BUILDERS = {builder.DATASET: builder for builder in (
    RefYoutubeVos, RefDavis17, A2dSentences, JhmdbSentences, RefCocoReferformer)}


def names(dataset: str) -> list[str]:
  """The TFDS names of a project dataset: "name", or "name/config" for each config."""
  builder = BUILDERS[dataset]
  return [f"{builder.name}/{c.name}" for c in builder.BUILDER_CONFIGS] or [builder.name]


def name_and_split(dataset: str, split: str) -> tuple[str, str]:
  """The TFDS name and split of a reader's split (RefCOCO "refcoco+/val": config refcoco+)."""
  subset, tfds_split = _subset_and_split(split)
  name = BUILDERS[dataset].name
  return (f"{name}/{subset}" if subset else name), tfds_split


def dataset_dir(data_dir: str, name: str) -> str:
  """Where TFDS keeps dataset `name` ("name" or "name/config") in `data_dir`."""
  return os.path.join(data_dir, *name.split("/"), DATASET_VERSION)


def prepare(name: str, manual_dir: str, data_dir: str, *, num_shards: int | None,
            workers: int, skip_bad_records: bool) -> str:
  """Builds every split of TFDS dataset `name` from the raw dataset in `manual_dir` into
  `data_dir`; returns the dataset's directory. num_shards: per split, None = by size."""
  builder = tfds.builder(name, data_dir=data_dir, workers=workers,
                         skip_bad_records=skip_bad_records)
  # try_download_gcs off: TFDS would otherwise look for a prepared copy on GCS (network).
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, num_shards=num_shards, try_download_gcs=False))
  return os.fspath(builder.data_dir)


def _prepared(data_dir: str, dataset: str, split: str) -> tuple[tfds.core.DatasetBuilder, str]:
  """The builder and TFDS split of a reader's split; a dataset not prepared in `data_dir` at
  DATASET_VERSION (none, or an older version) is a UserError naming the build command."""
  name, tfds_split = name_and_split(dataset, split)
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise errors.UserError(
        f"no TFDS dataset {name} in {dataset_dir(data_dir, name)}; build it with python -m "
        f"data_pipelines.build --dataset {dataset} --raw RAW --out {data_dir} --format tfds")
  return builder, tfds_split


def raw_data_source(data_dir: str, dataset: str, split: str):
  """Random access to the raw record bytes of a reader's split of a prepared TFDS dataset
  (records.decode reads them); a dataset not prepared in `data_dir` is a UserError."""
  builder, tfds_split = _prepared(data_dir, dataset, split)
  return builder.as_data_source(split=tfds_split,
                                deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)


def anchor_counts(data_dir: str, dataset: str, split: str) -> sampling.AnchorCounts:
  """The AnchorCounts of a reader's split of a prepared TFDS dataset, from its metadata."""
  builder, tfds_split = _prepared(data_dir, dataset, split)
  where = (f"{os.path.join(builder.data_dir, 'metadata.json')} "
           f"expressions_by_anchor_frames[{tfds_split!r}]")
  return sampling.AnchorCounts.from_json(
      builder.info.metadata["expressions_by_anchor_frames"].get(tfds_split), where)
