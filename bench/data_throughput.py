"""Training-clip throughput of the data pipeline on 720p JPEG videos.

Writes a few synthetic 1280x720 videos (smooth textures with moving objects, JPEG quality
90, id-map PNG masks) into TFRecord shards in a temporary directory, then reports:
- the cost per clip of each stage (decode, augment, normalise + pad), in one process;
- clips per second of the whole grain pipeline with worker_count=0 (one core);
- optionally (--workers N) clips per second with N grain worker processes.

  /work/venv/bin/python bench/data_throughput.py [--clips 60] [--workers 2]

Goal: >= 8 clips/s per core for T=5 clips at the training resolutions.
"""

import argparse
import io
import os
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image

from configs import ytvos as ytvos_config
from data_pipelines import pipeline
from data_pipelines import raw
from data_pipelines import raw_io
from data_pipelines import records
from data_pipelines import sampling
from data_pipelines import shards
from data_pipelines import transforms

HEIGHT, WIDTH = 720, 1280


def _texture(rng: np.random.Generator) -> np.ndarray:
  """A smooth random 720p RGB image (compresses like a photo, unlike white noise)."""
  small = rng.integers(0, 256, size=(HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BICUBIC))
  grain_noise = rng.integers(-8, 9, size=image.shape)
  return np.clip(image.astype(np.int16) + grain_noise, 0, 255).astype(np.uint8)


def _video(video_id: str, num_frames: int, rng: np.random.Generator) -> raw.VideoRecord:
  background = _texture(rng)
  names, frames, masks = [], [], []
  for t in range(num_frames):
    image, ids = background.copy(), np.zeros((HEIGHT, WIDTH), np.uint8)
    x = 100 + 20 * t
    image[200:450, x:x + 300] = (200, 40, 40)
    ids[200:450, x:x + 300] = 1
    image[400:650, 900:1150] = (40, 40, 200)
    ids[400:650, 900:1150] = 2
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    names.append(f"{5 * t:05d}")
    frames.append(buffer.getvalue())
    masks.append(raw_io.encode_id_map(ids))
  expressions = (raw.Expression("0", "the red box moving right", (1,)),
                 raw.Expression("1", "the blue box on the right", (2,)))
  return raw.VideoRecord(dataset="ytvos", split="train", video_id=video_id,
                         frame_names=tuple(names), frames=tuple(frames), frame_format="jpeg",
                         height=HEIGHT, width=WIDTH, mask_frames=tuple(names),
                         masks=tuple(masks), expressions=expressions)


def _write(root: str, videos: list[raw.VideoRecord]) -> None:
  directory = shards.split_dir(root, "train")
  os.makedirs(directory)
  infos = []
  for s, video in enumerate(videos):
    path = os.path.join(directory, shards.shard_name(s, len(videos), "tfrecord"))
    with shards.ShardWriter(path, "tfrecord") as writer:
      writer.write(records.encode(video))
    infos.append({"file": writer.info.file, "num_records": writer.info.num_records,
                  "sha256": writer.info.sha256})
  shards.write_info(directory, {"shards": infos, "format": "tfrecord"})


def _stages(videos: list[raw.VideoRecord], clips: int) -> None:
  """The training path of pipeline._TrainClip, stage by stage."""
  rng = np.random.default_rng(0)
  samples = [s for v in videos for s in sampling.expand(v, 5)]
  cfg = pipeline.DataConfig.for_train(_config("unused", 0))
  totals = {"decode": 0.0, "augment": 0.0, "normalise+pad": 0.0}
  for i in range(clips):
    sample = samples[i % len(samples)]
    t0 = time.process_time()
    geometry = transforms.random_geometry(rng, HEIGHT, WIDTH, cfg.augmentation)
    indices = sampling.clip_indices(rng, sample.anchor, 5, len(sample.record.frame_names))
    draft = transforms.draft_size(geometry, HEIGHT, WIDTH)
    clip, _ = pipeline.load_clip(sample, indices, "bench", draft)
    t1 = time.process_time()
    clip = transforms.augment(clip, rng, geometry, cfg.augmentation)
    t2 = time.process_time()
    bucket = transforms.choose_bucket([clip.size], cfg.buckets)
    transforms.normalize(clip.frames, shape=bucket)
    transforms.pad(clip.masks, bucket, (1, 2))
    t3 = time.process_time()
    for name, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2)):
      totals[name] += seconds
  for name, seconds in totals.items():
    print(f"  {name:14s} {1000 * seconds / clips:7.1f} ms/clip")
  print(f"  {'total':14s} {1000 * sum(totals.values()) / clips:7.1f} ms/clip "
        f"= {clips / sum(totals.values()):.1f} clips/s (CPU time of this process)")


def _config(root: str, workers: int):
  """The full Ref-YTVOS config (training resolutions) reading `root`, one clip a batch."""
  config = ytvos_config.get_config()
  config.data.update(shards_dir=root, batch_size=1, shuffle_window=16, worker_count=workers)
  return config


def _pipeline_rate(root: str, clips: int, workers: int) -> tuple[float, float]:
  """(clips per wall-clock second, clips per CPU second of this process)."""
  iterator = pipeline.make_train_iter(_config(root, workers), 0, 1)
  for _ in range(max(4, 2 * workers)):
    next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(clips):
    next(iterator)
  rates = clips / (time.perf_counter() - wall), clips / (time.process_time() - cpu)
  iterator.close()
  return rates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=60)
  parser.add_argument("--videos", type=int, default=4)
  parser.add_argument("--frames", type=int, default=20)
  parser.add_argument("--workers", type=int, default=0, help="also time N grain workers")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  rng = np.random.default_rng(0)
  videos = [_video(f"v{i}", args.frames, rng) for i in range(args.videos)]
  print(f"{args.videos} videos x {args.frames} frames of {WIDTH}x{HEIGHT} JPEG "
        f"({np.mean([len(f) for v in videos for f in v.frames]) / 1024:.0f} KiB per frame), "
        f"T=5 clips, scales {transforms.TRAIN_SCALES}, max size {transforms.TRAIN_MAX_SIZE}")
  print("stages, one process:")
  _stages(videos, args.clips)
  with tempfile.TemporaryDirectory() as root:
    _write(root, videos)
    wall, cpu = _pipeline_rate(root, args.clips, 0)
    print(f"grain pipeline, worker_count=0: {wall:.1f} clips/s wall-clock, {cpu:.1f} clips "
          f"per CPU second")
    if args.workers:
      wall, _ = _pipeline_rate(root, args.clips, args.workers)
      print(f"grain pipeline, worker_count={args.workers}: {wall:.1f} clips/s wall-clock")
  print(f"load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
  main()
