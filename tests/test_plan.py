"""The memory planner's command at the tiny config: it compiles the real train step for a
sharded mesh of fake devices from shapes alone and reports per-device figures."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
from flax import nnx

from configs import ytvos as ytvos_config
from vdit_jax import towers
from vdit_jax.models import vdit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_plan_on_two_devices():
  cmd = [sys.executable, "-m", "vdit_jax.plan", f"--config={REPO}/configs/ytvos.py:tiny",
         "--mesh=data:1,fsdp:2", "--frames=1", "--height=64", "--width=64"]
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, XLA_FLAGS=""))
  assert run.returncode == 0, run.stderr[-3000:]
  lines = run.stdout.strip().splitlines()
  assert "backend: XLA CPU" in run.stdout
  assert re.fullmatch(r"peak per device: \d+\.\d\d GiB", lines[-1]), lines[-1]
  mib = {m.group(1): float(m.group(2)) for m in
         re.finditer(r"^  (\w[\w ]*?) +(\d+\.\d+) MiB$", run.stdout, re.M)}
  assert {"frozen parameters", "trainable parameters", "optimizer state", "temporaries"} <= set(mib)
  # The frozen towers, sharded over fsdp=2 (configs/common.py sharding(); the tiny config
  # shards parameters of 1 KiB and more): about half their bytes on each device.
  config = ytvos_config.get_config("tiny")
  specs = towers.tower_specs()
  model = vdit.abstract_model(config, {n: towers.architecture(n, specs[n], f)
                                       for n, f in config.model.random_towers.items()})
  total = sum(int(np.prod(x.shape)) * x.dtype.itemsize
              for x in jax.tree.leaves(nnx.state(model.towers, nnx.Param)))
  assert abs(mib["frozen parameters"] * 2**20 - total / 2) <= 0.1 * total / 2
