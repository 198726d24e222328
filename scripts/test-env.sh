# Sourced by the scripts that run the staged test executables on the device machine
# (run-gpu-tests.sh, sanitize.sh): a missing GPU fails instead of skipping, the tests find the
# golden files and the binaries in STAGE_DIR, cuDNN is PyTorch's (cudnn-env.sh), and
# ATTNRT_GPUS (default: the GPUs nvidia-smi lists) tells the tests that need several GPUs how
# many the machine has, so they skip rather than fail on a machine known to have fewer.
# Usage: source STAGE_DIR/test-env.sh STAGE_DIR
export ATTNRT_REQUIRE_GPU=1
export ATTNRT_GOLDEN_DIR="$1/golden"
export ATTNRT_BIN_DIR="$1/bin"
source "$1/cudnn-env.sh"
if [ -z "${ATTNRT_GPUS:-}" ] && command -v nvidia-smi >/dev/null; then
  ATTNRT_GPUS="$(nvidia-smi -L | grep -c '^GPU ')"
fi
export ATTNRT_GPUS="${ATTNRT_GPUS:-0}"
