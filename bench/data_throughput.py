"""Training-clip throughput of the data pipeline on 720p JPEG videos.

Writes a few synthetic 1280x720 videos (smooth textures with moving objects, JPEG quality
90, id-map PNG masks) into TFRecord shards in a temporary directory, then reports:
- the CPU time per clip of each stage (decode masks, decode frames, augment, pad into a
  batch), in one process;
- clips per second of the whole grain pipeline with worker_count=0 (one core), per
  wall-clock second and per CPU second;
- optionally (--workers N) the same with N grain worker processes, CPU time summed over
  this process and its worker processes (psutil: user + system time of each, read before
  and after the timed clips).

  python bench/data_throughput.py [--clips 60] [--workers 2] [--repeat 3]

Goal: >= 8 clips per CPU second (per core) for T=5 clips at the training resolutions.
Frames leave the pipeline as uint8; their normalisation runs on the device.
"""

import argparse
import io
import os
import statistics
import tempfile
import time

from absl import flags
import numpy as np
from PIL import Image
import psutil

from configs import ytvos as ytvos_config
from data_pipelines import decoding
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


def _stages(videos: list[raw.VideoRecord], clips: int) -> float:
  """Times an approximation of train_clips.TrainClip's path, stage by stage; returns clips
  made per CPU second."""
  rng = np.random.default_rng(0)
  data = _config("unused", 0).data
  clip_sampling = sampling.ClipSampling(**data.sampling)
  augmentation = transforms.Augmentation(**data.augmentation)
  samples = [s for v in videos for s in clip_sampling.samples(v)]
  totals = dict.fromkeys(("decode masks", "decode frames", "augment", "pad (batch)"), 0.0)
  cropped_empty = 0
  for i in range(clips):
    sample = samples[i % len(samples)]
    t0 = time.process_time()
    geometry = transforms.random_geometry(rng, HEIGHT, WIDTH, augmentation)
    indices = clip_sampling.indices(rng, sample)
    masks, _ = decoding.load_masks(sample, indices, "bench")
    boxes, valid = transforms.mask_boxes(masks)
    t1 = time.process_time()
    if not transforms.visible_in(boxes, valid, geometry.region).any():
      cropped_empty += 1  # The pipeline resamples the clip without decoding its frames.
      totals["decode masks"] += t1 - t0
      continue
    draft = transforms.draft_size(geometry, HEIGHT, WIDTH)
    frames = decoding.load_frames(sample.record, indices, "bench", draft)
    clip = transforms.Clip(frames, masks, boxes, valid,
                           decoding.clean_caption(sample.expression.text))
    t2 = time.process_time()
    clip = transforms.augment(clip, rng, geometry, augmentation)
    t3 = time.process_time()
    bucket = transforms.choose_bucket([clip.size], data.buckets)
    transforms.pad_batch([clip.frames], bucket, (1, 2))
    transforms.pad_batch([clip.masks], bucket, (1, 2))
    t4 = time.process_time()
    for name, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
      totals[name] += seconds
  made = clips - cropped_empty
  if cropped_empty:
    print(f"  {cropped_empty} of {clips} clips cropped empty (frames not decoded)")
  for name, seconds in totals.items():
    print(f"  {name:14s} {1000 * seconds / made:7.1f} ms/clip")
  rate = made / sum(totals.values())
  print(f"  {'total':14s} {1000 / rate:7.1f} ms/clip = {rate:.1f} clips/s (CPU time of this "
        f"process)")
  return rate


def _config(root: str, workers: int):
  """The full Ref-YTVOS config (training resolutions) reading `root`, one clip a batch."""
  config = ytvos_config.get_config()
  config.data.update(shards_dir=root, batch_size=1, shuffle_window=16, worker_count=workers)
  return config


def _cpu_seconds(processes: list[psutil.Process]) -> float:
  """User + system CPU seconds the processes have used so far."""
  return sum(sum(p.cpu_times()[:2]) for p in processes)


def _pipeline_rate(root: str, clips: int, workers: int) -> tuple[float, float, float]:
  """(clips per wall-clock second, clips per CPU second of this process and its workers,
  clips per CPU second of the workers alone (nan without workers))."""
  iterator = pipeline.make_train_iter(_config(root, workers), 0, 1)
  for _ in range(max(4, 2 * workers)):
    next(iterator)
  main = psutil.Process()
  children = main.children(recursive=True)
  wall, cpu, worker_cpu = time.perf_counter(), _cpu_seconds([main] + children), \
      _cpu_seconds(children)
  for _ in range(clips):
    next(iterator)
  wall = time.perf_counter() - wall
  cpu = _cpu_seconds([main] + children) - cpu
  worker_cpu = _cpu_seconds(children) - worker_cpu
  iterator.close()
  return clips / wall, clips / cpu, clips / worker_cpu if children else float("nan")


def _report(name: str, rates: list[float]) -> None:
  print(f"  {name}: best {max(rates):.1f}, median {statistics.median(rates):.1f} "
        f"({', '.join(f'{r:.1f}' for r in rates)})")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=60)
  parser.add_argument("--videos", type=int, default=4)
  parser.add_argument("--frames", type=int, default=20)
  parser.add_argument("--workers", type=int, default=0, help="also time N grain workers")
  parser.add_argument("--repeat", type=int, default=1, help="measurements of each figure")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  rng = np.random.default_rng(0)
  videos = [_video(f"v{i}", args.frames, rng) for i in range(args.videos)]
  data = _config("unused", 0).data
  print(f"{args.videos} videos x {args.frames} frames of {WIDTH}x{HEIGHT} JPEG "
        f"({np.mean([len(f) for v in videos for f in v.frames]) / 1024:.0f} KiB per frame), "
        f"T={data.sampling.num_frames} clips, scales {tuple(data.augmentation.scales)}, max "
        f"size {data.augmentation.max_size}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
  stage_rates = []
  for r in range(args.repeat):
    print(f"stages, one process (run {r + 1}):")
    stage_rates.append(_stages(videos, args.clips))
  with tempfile.TemporaryDirectory() as root:
    _write(root, videos)
    runs = {w: [_pipeline_rate(root, args.clips, w) for _ in range(args.repeat)]
            for w in sorted({0, args.workers})}
  print("clips per second:")
  _report("stages, per CPU second", stage_rates)
  for w, rates in runs.items():
    wall, cpu, worker_cpu = zip(*rates)
    _report(f"grain worker_count={w}, per wall-clock second", list(wall))
    _report(f"grain worker_count={w}, per CPU second (this process + workers)", list(cpu))
    if w:
      _report(f"grain worker_count={w}, per CPU second of the workers", list(worker_cpu))
  print(f"load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
  main()
