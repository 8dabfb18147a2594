#!/usr/bin/env bash
# Runs one vdit-jax module as a multi-node GPU job under Slurm, one process per GPU.
#
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 launch/slurm_gpu.sh vdit_jax.main \
#       --config=configs/ytvos.py --workdir=/shared/workdirs/ytvos
#
# jax.distributed.initialize() reads the coordinator, process count and index from Slurm's
# environment, so VDIT_DISTRIBUTED=1 is all vdit_jax.main needs. Install the project first
# (README: pip install -c requirements/ci.txt -e . plus jax[cuda12]) in a venv on shared storage
# and activate it, then submit from the repository root.
#SBATCH --job-name=vdit-jax
#SBATCH --exclusive
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: sbatch $0 MODULE [ARGS...]" >&2; exit 2; }
cd "${SLURM_SUBMIT_DIR:?submit with sbatch from the repository root}"
VDIT_DISTRIBUTED=1 srun python -m "$@"
