#!/usr/bin/env bash
# Runs one vdit-jax module on every host of a Cloud TPU VM slice (big_vision's run_tpu.sh habit).
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh vdit_jax.main \
#       --config=configs/ytvos.py --workdir=/mnt/vdit/workdirs/ytvos
#
# Copies this checkout to every worker, installs it in a venv there (first run only), and
# starts `python -m MODULE ARGS...` on all workers at once with VDIT_DISTRIBUTED=1, which makes
# vdit_jax.main call jax.distributed.initialize() (TPU VMs need no coordinator arguments).
# The workdir, shards and weights must be on storage every worker shares (launch/README.md).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
[ $# -ge 1 ] || { echo "usage: $0 MODULE [ARGS...]" >&2; exit 2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
tpu=(gcloud compute tpus tpu-vm --zone="$ZONE")

tar -C "$repo" --exclude=.git --exclude=data --exclude=workdirs -czf /tmp/vdit_jax.tgz .
"${tpu[@]}" scp /tmp/vdit_jax.tgz "$TPU_NAME":/tmp/vdit_jax.tgz --worker=all
"${tpu[@]}" ssh "$TPU_NAME" --worker=all --command "
  set -e
  mkdir -p ~/vdit_jax && tar -C ~/vdit_jax -xzf /tmp/vdit_jax.tgz && cd ~/vdit_jax
  [ -d ~/vdit_venv ] || python3 -m venv ~/vdit_venv
  . ~/vdit_venv/bin/activate
  pip install -q -c requirements/ci.txt -e . 'jax[tpu]'
  VDIT_DISTRIBUTED=1 python -m $(printf '%q ' "$@")
"
