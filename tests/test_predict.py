"""Prediction on users' videos: the command on an mp4 and on a frames folder with a tiny
random model exported as `checkpoints.export` lays exports out; the shared, batched path
against the original's per-expression full path; every bad input through the command line;
the inference bench at the tiny config.

One tiny model serves every test, and every prediction runs at one window shape (4 frames
padded to 64x96), so the process compiles each model function once.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction

import av
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from PIL import Image

from configs import ytvos as ytvos_config
from data_pipelines import transforms
from vdit_jax import checkpoints, predict, prediction_outputs, pretrained, tokenizers
from vdit_jax import towers, train_state, video_io, xla_options
from vdit_jax.evaluation import original_size
from vdit_jax.models import head as head_lib
from vdit_jax.models import vdit as vdit_lib

import parity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 6 frames of 48x72: resized to 64x96 (the tiny config's short side 64), windows of 4 frames
# (config.predict.window) at frames 0-3 and 2-5.
NUM_FRAMES, HEIGHT, WIDTH = 6, 48, 72
TEXTS = ("a white box moving right", "the grey background", "the box")


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
  """Every executable of this module compiled at XLA's lowest optimisation level."""
  production = xla_options.for_backend
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(xla_options, "for_backend",
                  lambda backend=None: {**production(backend), **parity.FAST_COMPILE})
    yield


def _video_frames() -> np.ndarray:
  """(NUM_FRAMES, HEIGHT, WIDTH, 3) uint8: a white box moving right over smooth colour
  waves (which H.264 keeps well)."""
  y, x = np.mgrid[:HEIGHT, :WIDTH]
  background = np.stack([100 + 40 * np.sin(x / 6), 110 + 30 * np.cos(y / 5),
                         120 + 20 * np.sin((x + y) / 9)], -1)
  frames = np.repeat(background[None].round().astype(np.uint8), NUM_FRAMES, axis=0)
  for t in range(NUM_FRAMES):
    frames[t, 12:34, 4 + 6 * t:26 + 6 * t] = 250
  return frames


def _write_mp4(path, frames, fps=10):
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _decode(path) -> np.ndarray:
  with av.open(str(path)) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _export(model, config, out) -> str:
  """The export layout of `checkpoints.export` (params/ in the nested layout through the
  backbone's Orbax checkpointer, config.json, manifest.json) written by hand."""
  os.makedirs(out)
  params = train_state.split(model).params
  with pretrained.params_checkpointer() as checkpointer:
    checkpointer.save(os.path.join(out, "params"),
                      args=ocp.args.PyTreeSave(checkpoints.nested(params)))
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump({"step": 7, "dtype": "float32", "checkpoint": "none",
               "backbone": checkpoints.backbone_reference(config.model, config.seed)}, f)
  return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(config, model, export directory): the tiny ytvos model with trained-looking head
  parameters (perturbed from their initialisation, so that a load that kept the fresh
  ones would show)."""
  config = ytvos_config.get_config("tiny")
  model = vdit_lib.build(config)
  rng = np.random.default_rng(3)
  nnx.update(model, jax.tree.map(
      lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(x.dtype),
      train_state.split(model).params))
  model.eval()
  return config, model, _export(model, config, str(tmp_path_factory.mktemp("run") / "export"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(frames, mp4 path, frames folder path)."""
  root = tmp_path_factory.mktemp("inputs")
  frames = _video_frames()
  _write_mp4(root / "clip.mp4", frames)
  folder = root / "frames"
  folder.mkdir()
  for t, frame in enumerate(frames):  # Natural order: frame_2 before frame_10.
    Image.fromarray(frame).save(folder / f"frame_{2 * t}.{'png' if t % 2 else 'jpg'}",
                                quality=95)
  return frames, str(root / "clip.mp4"), str(folder)


def _run(capsys, *args):
  """`python -m vdit_jax.predict ARGS` in this process: (exit status, stdout, stderr)."""
  status = predict.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return status, out, err


def _full_path(model, config):
  """The original's scheme for one window and one expression: every tower and the whole
  model run for it (`VDIT.__call__`, the video encoded inside), the query the original
  picks (highest mean score, `head.select_query`), its mask probabilities and per-frame
  scores. Returns window frames (N, H, W, 3), text -> (probabilities (N, h, w), scores (N,))."""
  graphdef, state = nnx.split(model)
  tokenize = tokenizers.CaptionTokenizer.for_model("", **config.data.text)
  pre = config.eval.preprocessing

  def run(state, batch):
    model = nnx.merge(graphdef, state)
    outputs, features = model(batch, deterministic_latents=True)
    best = head_lib.select_query(outputs["pred_logits"])
    probabilities = jax.nn.sigmoid(model.head.refine(outputs, features, best))
    scores = jax.nn.sigmoid(outputs["pred_logits"][0, :, :, 0])[:, best[0]]
    return probabilities[0], scores

  compiled = {}

  def reference(frames, text):
    small = transforms.eval_resize(frames, pre.short_side, pre.max_size)
    assert small.shape[1:3] == (64, 96)  # A multiple of 16 and the size bucket: no padding.
    batch = dict(frames=small[None], pad_mask=np.zeros((1, 64, 96), bool),
                 size=np.array([[64, 96]], np.int32),
                 **{k: v[None] for k, v in tokenize(" ".join(text.lower().split())).items()
                    if k in ("clip_ids", "roberta_ids", "roberta_mask")})
    if "fn" not in compiled:
      compiled["fn"] = parity.compiled(run, state, batch)
    return tuple(np.asarray(x) for x in compiled["fn"](state, batch))

  return reference


def test_shared_batched_path_equals_the_per_expression_full_path(tiny, inputs):
  """Three expressions on one encoding per window, in batches of two (the second filled up)
  from an export: the probabilities and scores of each expression run alone through the
  whole model, window by window (frames 0-3, then 2-5 of which 4-5 are new), to 1e-5; the
  masks are those probabilities at the frame size, thresholded (the evaluators'
  original_size), wherever the logit is not within 1e-4 of the threshold."""
  config, model, export = tiny
  frames = inputs[0]
  predictor = predict.Predictor.from_checkpoint(export, deterministic_latents=True)
  assert predictor.step == 7 and predictor.expressions_per_step == 2
  results = list(predictor.stream(iter(frames), TEXTS))
  assert [len(r.frames) for r in results] == [4, 2]
  np.testing.assert_array_equal(np.concatenate([r.frames for r in results]), frames)
  reference = _full_path(model, config)
  for e, text in enumerate(TEXTS):
    first, second = reference(frames[:4], text), reference(frames[2:], text)
    ref_p = np.concatenate([first[0], second[0][2:]])
    ref_s = np.concatenate([first[1], second[1][2:]])
    got_p = np.concatenate([r.probabilities[e] for r in results])
    got_s = np.concatenate([r.scores[e] for r in results])
    assert np.abs(got_p - ref_p).max() <= 1e-5, text
    assert np.abs(got_s - ref_s).max() <= 1e-5, text
    got_m = np.concatenate([r.masks[e] for r in results])
    logits = original_size.logits_at(ref_p, (HEIGHT, WIDTH))
    decided = np.abs(logits) > 1e-4
    np.testing.assert_array_equal(got_m[decided], (logits > 0)[decided])
  # The API: the same masks and scores in one call.
  masks, scores = predictor(frames, list(TEXTS))
  assert masks.shape == (3, NUM_FRAMES, HEIGHT, WIDTH) and masks.dtype == bool
  np.testing.assert_array_equal(masks, np.concatenate([r.masks for r in results], 1))
  np.testing.assert_allclose(scores, np.concatenate([r.scores for r in results], 1), atol=1e-6)


def test_random_towers_are_the_same_in_every_build():
  """A run with random towers is identified by their architectures and seed
  (checkpoints.backbone_reference), so every build must make the same towers; the CLIP
  text tower's position embedding, the second key of its stream, once came out different
  (vdit_jax/abstract_build.py host_rngs)."""
  config = ytvos_config.get_config("tiny")
  build = lambda: towers.random_tower("clip_text", config.model.random_towers.clip_text,
                                      config.model.towers.clip_text, seed=5)
  first, second = (jax.tree.leaves(nnx.state(build(), nnx.Param)) for _ in range(2))
  for a, b in zip(first, second):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_windows_cover_a_video_once_with_real_frames():
  """Hand-made layouts: 10 frames in windows of 4 are 0-3, 4-7 and 6-9 (the last two new);
  3 frames are one window of 3."""
  windows = list(predict._windows(iter(range(10)), 4))
  assert windows == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 4), ([6, 7, 8, 9], 2)]
  assert list(predict._windows(iter(range(3)), 4)) == [([0, 1, 2], 3)]
  assert list(predict._windows(iter(range(8)), 4)) == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 4)]


def test_slugs_and_captions():
  assert prediction_outputs.slugs(["The man, holding a BIKE!", "the man holding a bike",
                                   "???", "x" * 80, "Ein Mädchen"]) == [
      "the-man-holding-a-bike", "the-man-holding-a-bike-2", "expression-3", "x" * 60,
      "ein-mädchen"]
  frame = np.full((60, 120, 3), 200, np.uint8)
  shown = prediction_outputs.captioned(frame, "the man holding a bike")
  band = max(10, 60 // 22) + 2 * max(2, max(10, 60 // 22) // 3)
  assert (shown[band:] == 200).all()  # Below the band: the frame as it was.
  top = shown[:band].astype(int)
  assert (top == 90).mean() > 0.5 and (top > 200).any()  # Darkened (200 x 0.45), white text.


def test_video_sampling_limits_and_folder_order(inputs, tmp_path):
  """A 10 fps file at --fps 5 keeps every other frame (named by their index in the file);
  --max-frames cuts after sampling; a folder's frames come in natural order."""
  frames, mp4, folder = inputs
  source = video_io.open_video(mp4, fps=5, max_frames=2)
  assert source.size == (HEIGHT, WIDTH) and source.fps == 5 and source.count is None
  assert [name for name, _ in source.frames()] == ["00000", "00002"]
  full = video_io.open_video(mp4)
  assert full.fps == 10 and full.count == NUM_FRAMES
  decoded = np.stack([f for _, f in full.frames()])
  assert np.abs(decoded.astype(int) - frames).mean() < 4  # H.264 is lossy.
  source = video_io.open_video(folder)
  assert [n for n, _ in source.frames()] == [f"frame_{2 * t}" for t in range(NUM_FRAMES)]
  assert source.fps == video_io.FOLDER_FPS and source.count == NUM_FRAMES


def _png_stack(directory, names):
  return np.stack([np.asarray(Image.open(os.path.join(directory, f"{n}.png"))) for n in names])


def test_command_on_an_mp4(tiny, inputs, tmp_path, capsys):
  """Masks, overlays (mp4 and GIF) and summary.json of two expressions on an mp4: the masks
  are the API's on the frames PyAV decodes from the file, the overlays blend the mask's
  pixels half-way to the expression's colour below the text band."""
  _, _, export = tiny
  _, mp4, _ = inputs
  out = tmp_path / "out"
  texts = [TEXTS[0], "The  BOX!"]
  status, stdout, stderr = _run(capsys, "--checkpoint", export, "--video", mp4, "--text",
                                texts[0], "--text", texts[1], "--out", out, "--gif",
                                "--deterministic-latents")
  assert status == 0, stderr
  assert re.search(r"6 frames x 2 expressions: [\d.]+ frames/s per expression", stdout)
  frames = _decode(mp4)
  masks, scores = predict.Predictor.from_checkpoint(export, deterministic_latents=True)(
      frames, texts)
  summary = json.loads((out / "summary.json").read_text())
  names = [f"{t:05d}" for t in range(NUM_FRAMES)]
  assert summary["frames"] == NUM_FRAMES and summary["frame_names"] == names
  assert summary["size"] == [HEIGHT, WIDTH] and summary["fps"] == 10 and summary["step"] == 7
  assert summary["towers_dtype"] == "float32" and summary["deterministic_latents"]
  assert {"load_s", "compile_s", "model_s", "postprocess_s", "total_s",
          "frames_per_second_per_expression"} <= set(summary["timings"])
  band = max(10, HEIGHT // 22) + 2 * max(2, max(10, HEIGHT // 22) // 3)
  for e, (slug, expression) in enumerate(zip(["a-white-box-moving-right", "the-box"],
                                             summary["expressions"])):
    assert (expression["text"], expression["slug"]) == (texts[e], slug)
    assert sorted(os.listdir(out / slug)) == [f"{n}.png" for n in names]
    np.testing.assert_array_equal(_png_stack(out / slug, names), masks[e] * np.uint8(255))
    np.testing.assert_allclose(expression["frame_scores"], scores[e], atol=1e-5)
    assert expression["mean_score"] == pytest.approx(float(scores[e].mean()), abs=1e-5)
    assert expression["overlays"] == [f"{slug}.mp4", f"{slug}.gif"]
    colour = np.array(prediction_outputs.COLOURS[e], float)
    expected = np.where(masks[e][..., None], (frames + colour) / 2, frames)[:, band:]
    with Image.open(out / f"{slug}.gif") as gif:
      assert gif.n_frames == NUM_FRAMES and gif.size == (WIDTH, HEIGHT)
      shown = []
      for t in range(NUM_FRAMES):
        gif.seek(t)
        shown.append(np.asarray(gif.convert("RGB"), float))
    assert np.abs(np.stack(shown)[:, band:] - expected).mean() < 4  # 255-colour palettes.
    # H.264 keeps luma at full resolution (yuv420p halves the colour planes).
    shown = _decode(out / f"{slug}.mp4").astype(float)
    assert shown.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    luma = lambda rgb: rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(luma(shown[:, band:]) - luma(expected)).mean() < 6


def test_command_on_a_frames_folder(tiny, inputs, tmp_path, capsys):
  """A folder of PNG and JPEG frames, the first 5 (two windows: 0-3 and 1-4), one
  expression, another threshold: masks named after the frame files."""
  _, _, export = tiny
  _, _, folder = inputs
  out = tmp_path / "out"
  status, _, stderr = _run(capsys, "--checkpoint", export, "--video", folder, "--text",
                           "the box", "--out", out, "--max-frames", 5, "--fps", 4,
                           "--threshold", 0.3, "--deterministic-latents")
  assert status == 0, stderr
  names = [f"frame_{2 * t}" for t in range(5)]
  frames = np.stack([np.asarray(Image.open(os.path.join(folder, n + (".png" if t % 2 else
                                                                   ".jpg"))))
                     for t, n in enumerate(names)])
  predictor = predict.Predictor.from_checkpoint(export, threshold=0.3,
                                                deterministic_latents=True)
  masks, _ = predictor(frames, "the box")
  np.testing.assert_array_equal(_png_stack(out / "the-box", names), masks[0] * np.uint8(255))
  summary = json.loads((out / "summary.json").read_text())
  assert summary["frame_names"] == names and summary["fps"] == 4
  assert summary["threshold"] == 0.3
  assert sorted(os.listdir(out)) == ["summary.json", "the-box", "the-box.mp4"]


def _zero_frame_video(path):
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=Fraction(10))
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    container.start_encoding()


def _bad_inputs(tmp_path, export, mp4, folder):
  """name -> (command arguments that change, what the message must say)."""
  (tmp_path / "garbage.mp4").write_bytes(b"not a video " * 50)
  _zero_frame_video(tmp_path / "empty.mp4")
  mixed = tmp_path / "mixed"
  shutil.copytree(folder, mixed)
  Image.fromarray(np.zeros((HEIGHT, WIDTH + 8, 3), np.uint8)).save(mixed / "frame_5.png")
  other_config = tmp_path / "other_config.py"
  other_config.write_text("from configs import ytvos\n\n\ndef get_config(arg=None):\n"
                          "  config = ytvos.get_config('tiny')\n"
                          "  config.model.head.num_queries = 3\n  return config\n")
  other_backbone = tmp_path / "other_backbone"
  shutil.copytree(export, other_backbone)
  manifest = json.loads((other_backbone / "manifest.json").read_text())
  manifest["backbone"]["seed"] += 1
  (other_backbone / "manifest.json").write_text(json.dumps(manifest))
  missing = tmp_path / "missing.mp4"
  return {
      "missing video": (["--video", missing], f"error: {missing}: no such file or folder"),
      "unreadable video": (["--video", tmp_path / "garbage.mp4"],
                           f"error: {tmp_path / 'garbage.mp4'}: cannot be read as a video"),
      "zero frames": (["--video", tmp_path / "empty.mp4"],
                      f"error: {tmp_path / 'empty.mp4'}: no video frames"),
      "mixed sizes": (["--video", mixed], f"error: {mixed / 'frame_5.png'} is 48x80 (HxW) but "
                      "frame_0.jpg is 48x72"),
      "empty text": (["--text", ""], "error: expression 2 of 2 is empty"),
      "whitespace text": (["--text", " \t "], "error: expression 2 of 2 is empty"),
      "missing checkpoint": (["--checkpoint", tmp_path / "nowhere"],
                             f"error: {tmp_path / 'nowhere'}: no such checkpoint directory"),
      "config mismatch": (["--config", other_config],
                          f"error: {export}: its trainable parameters do not fit this model"),
      "backbone mismatch": (["--checkpoint", other_backbone],
                            f"error: {other_backbone} was trained on another frozen backbone"),
  }


BAD_INPUTS = ("missing video", "unreadable video", "zero frames", "mixed sizes", "empty text",
              "whitespace text", "missing checkpoint", "config mismatch", "backbone mismatch")
# Checkpoint errors go on to list what differs, one line each.
_MULTI_LINE = ("config mismatch", "backbone mismatch")


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_1_with_a_message_naming_it(tiny, inputs, tmp_path, capsys, case):
  _, _, export = tiny
  _, mp4, folder = inputs
  changes, message = _bad_inputs(tmp_path, export, mp4, folder)[case]
  args = {"--checkpoint": export, "--video": mp4, "--out": tmp_path / "out"}
  args.update(zip(changes[::2], changes[1::2]))
  argv = [x for kv in args.items() for x in kv if kv[0] != "--text"]
  argv += ["--text", TEXTS[0], "--text", args.get("--text", TEXTS[1])]
  status, _, stderr = _run(capsys, *argv)
  assert status == 1
  assert stderr.startswith(message), stderr
  if case not in _MULTI_LINE:
    assert stderr.count("\n") == 1, stderr
  assert not (tmp_path / "out").exists()


def test_the_module_runs_as_a_command(tmp_path):
  missing = tmp_path / "missing.mp4"
  run = subprocess.run([sys.executable, "-m", "vdit_jax.predict", "--checkpoint", tmp_path,
                        "--video", missing, "--text", "a cat", "--out", tmp_path / "out"],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                       text=True, timeout=120)
  assert run.returncode == 1
  assert run.stderr.splitlines()[-1] == f"error: {missing}: no such file or folder"


def test_api_rejects_bad_frames_and_texts(tiny):
  _, _, export = tiny
  predictor = predict.Predictor.from_checkpoint(export)
  with pytest.raises(predict.PredictError, match=r"\(T, H, W, 3\) uint8"):
    predictor(np.zeros((2, 8, 8, 3), np.float32), "a cat")
  with pytest.raises(predict.PredictError, match="expression 1 of 1 is empty"):
    predictor(np.zeros((2, 8, 8, 3), np.uint8), ["  "])
  frames = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
  with pytest.raises(predict.PredictError, match=r"frame 1 is 8x10 \(HxW\), frame 0 is 8x8"):
    next(predictor.stream(frames, "a cat"))


def test_inference_bench_at_the_tiny_config(tiny, capsys, monkeypatch):
  """bench/inference.py at the tiny config, one timing round: its FLOPs table (the
  components' sum against the two stages lowered whole, and fewer FLOPs per expression-frame
  with 4 expressions than the original's), and frames per second for 2 expressions."""
  monkeypatch.syspath_prepend(os.path.join(REPO, "bench"))  # Its shared bench modules.
  spec = importlib.util.spec_from_file_location(
      "bench_inference", os.path.join(REPO, "bench", "inference.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  bench.main(["--size", "tiny", "--expressions", "2", "--rounds", "1"])
  lines = capsys.readouterr().out.splitlines()
  table = {line.split("  ")[0]: line.split() for line in lines}
  totals = [float(x) for x in table["total"][1:]]
  whole = [float(x) for x in table["ours lowered whole (encode_video + segment)"][-2:]]
  np.testing.assert_allclose(whole, totals[1:], rtol=0.02)
  ratio = float(re.fullmatch(r"FLOPs per expression-frame vs the original, 4 expressions: "
                             r"([\d.]+)", lines[lines.index("") - 1]).group(1))
  assert ratio == pytest.approx(totals[2] / totals[0], abs=0.01) and ratio < 1
  row = next(line.split() for line in lines if line.startswith("2 "))
  assert all(float(x) > 0 for x in row[1:])
