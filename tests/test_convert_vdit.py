"""`python -m vdit_jax.convert vdit` on files in the layout of VD-IT's released checkpoint.

The source is the original's `VDIT` state dict rebuilt from torch modules that carry its
names, at the tiny config's sizes: TorchReferringHead (tests/head_reference.py, from
models/diffvos_cross.py) at the top level with its decoder holding `bbox_embed` a second time
(diffvos_cross.py:160); TorchAdapters (tests/extractor_reference.py) under
`backbone.0.diff_ftex.` with each `act_postprocess` level registered again as
`act_{k+1}_postprocess` (Text-To-Video-Finetuning/train_itcross_pn.py:174-231); small stand-in
modules at the frozen towers' names (`unet`, `vae`, `text_encoder`, `cv_model`), RoBERTa's
`text_encoder.text_backbone` and `sentence_proj`. torch's own `state_dict()` writes the
aliases and prefixes. It is saved as main.py:236-243 saves it: the model, a stepped AdamW's
state, MultiStepLR's state (with its Counter), the epoch, the argparse `args` and the grad
scaler's state.

The expected values are each torch parameter in the layout its module type implies, written
here from torch's classes (Linear (out, in) -> kernel (in, out); Conv2d (O, I, kh, kw) ->
kernel (kh, kw, I, O); LayerNorm / GroupNorm weight -> scale; Embedding weight -> embedding;
bare parameters as they are), at the paths of the modules they come from; they are compared
with what `checkpoints.load_trained` reads into the parameters of `vdit.build(tiny config)`.
"""

import argparse
import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from configs import ytvos
from vdit_jax import backbone_format, checkpoints, towers, train_state
from vdit_jax.convert import __main__ as convert_main
from vdit_jax.convert import io
from vdit_jax.convert import vdit as vdit_convert
from vdit_jax.models import extractor
from vdit_jax.models import vdit as vdit_lib

import parity
from extractor_reference import TorchAdapters
from head_reference import TorchReferringHead, full_size_torch_keys

TINY = "configs/ytvos.py:tiny"
FROZEN_STAND_INS = ("unet", "vae", "text_encoder", "cv_model")
EPOCH, OPTIMIZER_STEPS = 8, 2
# The original's act_postprocess input channels (`dim_tokens_enc`, train_itcross_pn.py:169).
FULL_SIZE_LEVEL_CHANNELS = (512, 960, 1600, 1920)


def _torch_head(head_config) -> TorchReferringHead:
  c = head_config
  return TorchReferringHead(
      c.in_channels, c.text_dim, c.hidden_dim, c.nheads, c.enc_layers, c.dec_layers,
      c.dim_feedforward, c.enc_n_points, c.dec_n_points, c.num_queries, c.num_classes,
      c.dynamic_mask_channels, c.controller_layers, c.rel_coord, None)


def _torch_adapters(architectures, config, level_channels) -> TorchAdapters:
  e = config.model.extractor
  return TorchAdapters(architectures["clip_vision"].hidden_size,
                       architectures["clip_text"].hidden_size,
                       architectures["vae_encoder"].latent_channels, level_channels,
                       config.model.head.in_channels, fusion_heads=e.fusion_heads,
                       fusion_ffn_dim=e.fusion_ffn_dim, fusion_ln_eps=e.fusion_ln_eps)


def _released_layout(head: nn.Module, adapters: nn.Module) -> nn.Module:
  """The original VDIT's module tree around `head` and `adapters` (both changed in place):
  aliases, frozen stand-ins, RoBERTa and sentence_proj added."""
  head.transformer.decoder.bbox_embed = head.bbox_embed
  for k, level in enumerate(adapters.act_postprocess):
    adapters.add_module(f"act_{k + 1}_postprocess", level)
  for name in FROZEN_STAND_INS:
    adapters.add_module(name, nn.Linear(3, 2))
  backbone = nn.Module()
  backbone.diff_ftex = adapters
  head.backbone = nn.Sequential(backbone)  # models/backbone.py's Joiner: backbone.0
  head.text_encoder = nn.Module()
  head.text_encoder.text_backbone = nn.Embedding(5, 3)
  head.sentence_proj = nn.Sequential(nn.Linear(3, 3))
  return head


def _layout(module: nn.Module, prefix: tuple) -> dict:
  """Our parameter path -> (torch parameter, numpy transform) for every parameter of
  `module`, by the torch class that owns it."""
  renames = {nn.Linear: {"weight": ("kernel", lambda w: w.T)},
             nn.Conv2d: {"weight": ("kernel", lambda w: w.transpose(2, 3, 1, 0))},
             nn.LayerNorm: {"weight": ("scale", None)},
             nn.GroupNorm: {"weight": ("scale", None)},
             nn.Embedding: {"weight": ("embedding", None)}}
  out = {}
  for name, sub in module.named_modules():
    names = tuple(int(p) if p.isdigit() else p for p in name.split(".")) if name else ()
    rules = next((r for cls, r in renames.items() if isinstance(sub, cls)), {})
    for leaf, p in sub.named_parameters(recurse=False):
      leaf, transform = rules.get(leaf, (leaf, None))
      out[prefix + names + (leaf,)] = (p, transform or (lambda x: x))
  return out


def _save_released(path, model: nn.Module, *, state_dict=None, args=None) -> None:
  """torch.save of main.py's dict: the model's state dict (or `state_dict`) and the state of
  an AdamW (over copies of the model's parameters) stepped OPTIMIZER_STEPS times, of its
  MultiStepLR and of a disabled grad scaler."""
  copies = [p.detach().clone().requires_grad_() for p in model.parameters()]
  optimizer = torch.optim.AdamW(copies, lr=5e-5, weight_decay=5e-4)
  scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [6, 8])
  for _ in range(OPTIMIZER_STEPS):
    for p in copies:
      p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    scheduler.step()
  args = args or argparse.Namespace(dataset_file="ytvos", lr=5e-5, lr_drop=[6, 8],
                                    num_frames=5, masks=True, resume=None, amp=False)
  torch.save({"model": model.state_dict() if state_dict is None else state_dict,
              "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
              "epoch": EPOCH, "args": args,
              "grad_scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict()}, path)


@pytest.fixture(scope="module")
def tiny_config():
  return ytvos.get_config("tiny")


@pytest.fixture(scope="module")
def released(tiny_config, tmp_path_factory):
  """(path of the released-layout file, our path -> expected value, its original keys)."""
  specs = towers.tower_specs()
  architectures = {name: towers.architecture(name, specs[name], fields)
                   for name, fields in tiny_config.model.random_towers.items()}
  head = _torch_head(tiny_config.model.head)
  adapters = _torch_adapters(architectures, tiny_config, extractor.level_channels(architectures))
  layout = {**_layout(head, ("head",)), **_layout(adapters, ("extractor",))}
  model = parity.randomized(_released_layout(head, adapters), 0.1, seed=3)
  path = tmp_path_factory.mktemp("released") / "vdit.pth"
  _save_released(path, model)
  expected = {key: transform(p.detach().numpy()) for key, (p, transform) in layout.items()}
  return path, expected, model


@pytest.fixture(scope="module")
def tiny_params(tiny_config):
  """The trainable parameters of the tiny VDIT, freshly initialised, and its backbone
  reference. `vdit.build` assembles them around the config's random towers; those are built
  abstractly here (their initialisation takes half a minute, and only their architectures
  shape the adapters)."""
  towers_used = {name: nnx.eval_shape(lambda name=name, fields=fields: towers.random_tower(
      name, fields, tiny_config.model.towers[name], seed=0))
                 for name, fields in tiny_config.model.random_towers.items()}
  model = vdit_lib.assemble(tiny_config, towers_used)
  return (train_state.split(model).params,
          checkpoints.backbone_reference(tiny_config.model, tiny_config.seed))


def _convert(checkpoint, out, *extra) -> int:
  return convert_main.main(["vdit", "--checkpoint", str(checkpoint), "--out", str(out),
                            "--config", TINY, *extra])


def _flat(state: nnx.State) -> dict:
  return {tuple(path): np.asarray(var.get_value()) for path, var in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def converted(released, tmp_path_factory):
  """The float32 conversion of `released`, and the shapes of the tensors it read."""
  out = tmp_path_factory.mktemp("converted") / "vdit"
  read = []
  array = io.tensor_array
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(io, "tensor_array", lambda t: read.append(tuple(t.shape)) or array(t))
    assert _convert(released[0], out) == 0
  return out, read


def test_converts_and_reloads_the_source_values(released, converted, tiny_params):
  _, expected, _ = released
  out, _ = converted
  params, backbone = tiny_params
  loaded, step = checkpoints.load_trained(str(out), params, backbone=backbone)
  got = _flat(loaded)
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg="/".join(map(str, key)))
  assert step == OPTIMIZER_STEPS
  manifest = json.loads((out / "manifest.json").read_text())
  assert (manifest["epoch"], manifest["dtype"]) == (EPOCH, "float32")
  assert json.loads((out / "config.json").read_text())["model"]["weights_dir"] == ""


def test_frozen_tensors_are_not_read(released, converted):
  """Only the trainable tensors (aliases included) leave the memory map."""
  _, _, model = released
  _, read = converted
  frozen = vdit_convert.core.Rules(ignore=vdit_convert.FROZEN_OR_UNUSED)
  trainable = [tuple(v.shape) for k, v in model.state_dict().items()
               if frozen.rename(k) is not None]
  assert len(trainable) < len(model.state_dict())
  assert sorted(read) == sorted(trainable)


def test_bfloat16_output(released, tiny_params, tmp_path):
  """Stored rounded to bfloat16, read back into the model's float32 parameters."""
  _, expected, _ = released
  params, backbone = tiny_params
  assert _convert(released[0], tmp_path / "bf16", "--dtype", "bfloat16") == 0
  got = _flat(checkpoints.load_trained(str(tmp_path / "bf16"), params, backbone=backbone)[0])
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value.astype(ml_dtypes.bfloat16).astype(np.float32))
  assert json.loads((tmp_path / "bf16" / "manifest.json").read_text())["dtype"] == "bfloat16"


def test_the_output_is_an_init_from_source(released, converted, tiny_params):
  """config.init_from accepts the directory; init_skip keeps the class head fresh."""
  _, expected, _ = released
  params, backbone = tiny_params
  loaded = _flat(checkpoints.load_trainable(str(converted[0]), params, skip=("class_embed",),
                                            backbone=backbone))
  fresh = _flat(params)
  for key, value in loaded.items():
    np.testing.assert_array_equal(value, fresh[key] if "class_embed" in key else expected[key])


def _assert_refused(capsys, tmp_path, out, *needles):
  err = capsys.readouterr().err
  for needle in needles:
    assert needle in err, err
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("edit, needles", [
    (lambda sd: sd.pop("controller.layers.0.bias"),
     ["1 missing", "head.controller.layers.0.bias"]),
    (lambda sd: sd.pop("backbone.0.diff_ftex.noise_pred.weight"),
     ["1 missing", "extractor.noise_pred.kernel"]),
    (lambda sd: sd.update({"backbone.0.diff_ftex.noise_gate.weight": torch.zeros(4)}),
     ["1 unexpected", "backbone.0.diff_ftex.noise_gate.weight"]),
    (lambda sd: sd.update({"backbone.0.diff_ftex.noise_fc.0.weight": torch.zeros(4, 5)}),
     ["shape mismatch", "backbone.0.diff_ftex.noise_fc.0.weight: (4, 5) -> (4, 4)"]),
    (lambda sd: sd["backbone.0.diff_ftex.act_2_postprocess.1.bias"].add_(1.0),
     ["backbone.0.diff_ftex.act_2_postprocess.1.bias: differs from "
      "backbone.0.diff_ftex.act_postprocess.1.1.bias"]),
], ids=["missing-head", "missing-adapter", "unexpected", "mis-shaped", "alias-differs"])
def test_bad_keys_are_named_and_nothing_is_written(released, tmp_path, capsys, edit, needles):
  _, _, model = released
  state_dict = {k: v.clone() for k, v in model.state_dict().items()}
  edit(state_dict)
  _save_released(tmp_path / "bad.pth", model, state_dict=state_dict)
  assert _convert(tmp_path / "bad.pth", tmp_path / "out") == 1
  _assert_refused(capsys, tmp_path, tmp_path / "out", *needles)


class _RunsACommand:
  """Pickles as a call of os.system."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_another_global_is_refused_unrun(released, tmp_path, capsys):
  marker = tmp_path / "ran"
  _, _, model = released
  _save_released(tmp_path / "evil.pth", model, args=_RunsACommand(marker))
  assert _convert(tmp_path / "evil.pth", tmp_path / "out") == 1
  _assert_refused(capsys, tmp_path, tmp_path / "out", "nothing was unpickled",
                  f"{os.system.__module__}.system")
  assert not marker.exists()


def test_an_existing_output_needs_overwrite(released, converted, capsys):
  out, _ = converted
  assert _convert(released[0], out) == 1
  assert "--overwrite" in capsys.readouterr().err


def _converted_backbone(directory, architectures) -> str:
  """A converted-backbone directory's manifest and tower config.json files (no weights):
  architectures maps tower name -> its config.json dict."""
  os.makedirs(directory)
  with open(backbone_format.manifest_path(directory), "w", encoding="utf-8") as f:
    json.dump({"format": backbone_format.FORMAT, "towers": sorted(architectures)}, f)
  for name, fields in architectures.items():
    os.makedirs(os.path.dirname(backbone_format.config_path(directory, name)))
    with open(backbone_format.config_path(directory, name), "w", encoding="utf-8") as f:
      json.dump(fields, f)
  return directory


def test_released_reference_accepts_conversions_of_the_released_towers(tmp_path):
  """Parameters converted for the full-size config fit any converted backbone whose towers have
  the released architectures, and no other."""
  config = ytvos.get_config()
  _, stored = vdit_convert.trainable_targets(config)
  assert stored == checkpoints.released_reference()
  released = {name: a.to_dict() for name, a in towers.released_architectures().items()}
  config.model.weights_dir = _converted_backbone(str(tmp_path / "released"), released)
  checkpoints.check_backbone(stored, checkpoints.backbone_reference(config.model, 0), "vdit")
  narrower = dict(released, unet=dict(released["unet"], block_out_channels=[160, 320, 640, 640]))
  config.model.weights_dir = _converted_backbone(str(tmp_path / "other"), narrower)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"(?s)vdit was trained on the released towers .* is not a conversion "
                     r"of them:\n  unet block_out_channels: \[160, 320, 640, 640\] here, "
                     r"\[320, 640, 1280, 1280\] released\n"):
    checkpoints.check_backbone(stored, checkpoints.backbone_reference(config.model, 0), "vdit")
  tiny = ytvos.get_config("tiny")
  with pytest.raises(checkpoints.CheckpointError, match="random towers"):
    checkpoints.check_backbone(stored, checkpoints.backbone_reference(tiny.model, 0), "vdit")


def test_the_released_layout_fills_the_full_size_model():
  """The original's trainable keys at full size (the head's from tests/head_reference.py, the
  adapters' from TorchAdapters with the original's widths, both on the meta device, with
  their aliases) fill every trainable parameter of the full-size model exactly."""
  config = ytvos.get_config()
  released = towers.released_architectures()
  with torch.device("meta"):
    adapters = _torch_adapters(released, config, FULL_SIZE_LEVEL_CHANNELS)
    for k, level in enumerate(adapters.act_postprocess):
      adapters.add_module(f"act_{k + 1}_postprocess", level)
  keys = dict(full_size_torch_keys())
  keys.update({f"{vdit_convert.EXTRACTOR_PREFIX}{k}": tuple(v.shape)
               for k, v in adapters.state_dict().items()})
  targets, _ = vdit_convert.trainable_targets(config)
  converted = vdit_convert.convert_state_dict(
      {k: np.broadcast_to(np.float32(0), s) for k, s in keys.items()}, targets,
      what="full-size VD-IT")
  assert converted.keys() == targets.keys()
  assert sum(x.size for x in converted.values()) == 30_038_986
  assert len(keys) - len(converted) == 4 * 6 + 4 * 4  # bbox_embed and act_k aliases
