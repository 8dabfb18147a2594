"""One process of a multi-process evaluation test (tests/test_evaluation.py).

  python tests/eval_worker.py SETTINGS_JSON PROCESS_ID

SETTINGS_JSON: {"coordinator", "num_processes", "dataset", "split", "raw", "shards_dir",
"davis_dir", "out_dir", "shift", "step"}. Joins the JAX processes, then evaluates the oracle of
tests/eval_oracle.py through a jitted cross-process reduction.
"""

import json
import sys

import jax

import eval_config
import eval_oracle
from vdit_jax.evaluation import runner


def main(settings: dict, process_id: int) -> None:
  jax.distributed.initialize(coordinator_address=settings["coordinator"],
                             num_processes=settings["num_processes"], process_id=process_id,
                             initialization_timeout=60)
  config = eval_config.tiny_config(settings["dataset"], settings["split"],
                                   settings["shards_dir"], settings["davis_dir"])
  truth = eval_oracle.GroundTruth(settings["dataset"], settings["raw"], settings["split"])
  oracle = eval_oracle.Oracle(truth, config.eval.queries, shift=settings["shift"])
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  runner.evaluate(config, "", eval_oracle.collective(oracle, mesh), step=settings["step"],
                  out_dir=settings["out_dir"], progress=False)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]), int(sys.argv[2]))
