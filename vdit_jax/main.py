r"""The vdit-jax entry point: train, evaluate or export from one config.

  python -m vdit_jax.main --config=configs/ytvos.py --workdir=DIR [--mode=train|eval|export]
      [--config.optimizer.lr=1e-4 ...]

Before any work starts, every input the mode needs (dataset shards, converted backbone,
checkpoint) is checked; a missing one ends the run with its path and the command that
creates it.

Multi-host: with VDIT_DISTRIBUTED=1 every process calls jax.distributed.initialize() first
(launch/tpu_pod.sh and launch/slurm_gpu.sh set it; TPU VMs and Slurm need nothing else). On
other clusters also set VDIT_COORDINATOR=host:port, VDIT_NUM_PROCESSES and VDIT_PROCESS_ID.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vdit_jax import errors, preflight

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/ytvos.py or configs/ytvos.py:tiny.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export"],
                          "What to run (prediction on your own videos: python -m "
                          "vdit_jax.predict).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of input errors too.")


def _initialize_distributed() -> None:
  """Joins the multi-process JAX runtime when the launcher asks for it."""
  if os.environ.get("VDIT_DISTRIBUTED") != "1":
    return
  import jax  # Deferred: single-host runs that fail preflight never pay for importing JAX.
  explicit = {}
  if "VDIT_COORDINATOR" in os.environ:
    explicit = dict(coordinator_address=os.environ["VDIT_COORDINATOR"],
                    num_processes=int(os.environ["VDIT_NUM_PROCESSES"]),
                    process_id=int(os.environ["VDIT_PROCESS_ID"]))
  jax.distributed.initialize(**explicit)
  logging.info("process %d of %d joined", jax.process_index(), jax.process_count())


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a --config.* override that names no config field reported
  as one message (ml_collections raises a bare AttributeError for it)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    problem = str(e)
  except (AttributeError, KeyError) as e:
    # ml_collections wraps a KeyError("'key'\nDid you mean ...") in an AttributeError.
    cause = e.args[0] if e.args else e
    text = str(cause.args[0] if isinstance(cause, KeyError) else cause)
    key, _, hint = text.partition("\n")
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    flag = next((a for a in overrides if a.endswith("." + key.strip("'"))), "--config.*")
    problem = f"{flag}: the config has no field {key}. {hint}".strip()
  print(f"FATAL Flags parsing error: {problem}\nPass --helpshort or --helpfull to see help "
        "on flags.", file=sys.stderr)
  sys.exit(1)


def _run() -> int:
  _initialize_distributed()
  config_flag = flags.FLAGS["config"].serialize().split("=", 1)[1]
  needs = preflight.requirements(_CONFIG.value, _MODE.value, _WORKDIR.value, config_flag)
  missing = preflight.first_missing(needs)
  if missing is not None:
    print(missing.message(), file=sys.stderr)
    return 1
  logging.info("all inputs of --mode=%s are present", _MODE.value)
  # Deferred: a run that fails preflight never pays for importing JAX and the model.
  from vdit_jax import experiment
  config, workdir = _CONFIG.value, _WORKDIR.value
  if _MODE.value == "train":
    outcome = experiment.run_train(config, workdir)
    print(f"{'stopped' if outcome.preempted else 'trained'} at step {outcome.step}; "
          f"checkpoints in {os.path.join(workdir, 'checkpoints')}")
  elif _MODE.value == "eval":
    print(f"results in {experiment.run_eval(config, workdir).results}")
  else:
    print(f"exported to {experiment.run_export(config, workdir)}")
  return 0


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  return errors.run_command(_run, verbose=_VERBOSE.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=_parse_flags)
