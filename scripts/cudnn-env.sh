# Sourced by the device machine's scripts (run-gpu-tests.sh, sanitize.sh, perf-tracker.sh):
# points attnrt at a cuDNN 9 and makes it the only one the process can reach.
#
# The PyTorch environment there holds one (pip's nvidia-cudnn-cu13); an ATTNRT_CUDNN_LIB
# already set wins. attnrt opens that file by path, but cudarc's bindings then open cuDNN by
# name, trying `libcudnn.so` first; the machine has another cuDNN under that name on the
# loader's path, and attnrt refuses to mix the two ("another cuDNN ... shadows this one"). A
# folder holding `libcudnn.so` -> the chosen `libcudnn.so.9`, first on LD_LIBRARY_PATH, makes
# cudarc's lookup land on the same file.
if [ -z "${ATTNRT_CUDNN_LIB:-}" ]; then
  cudnn="$(python3 -c 'import nvidia.cudnn; print(nvidia.cudnn.__path__[0])' 2>/dev/null)" &&
    export ATTNRT_CUDNN_LIB="$cudnn/lib"
fi
if [ -n "${ATTNRT_CUDNN_LIB:-}" ]; then
  so="$ATTNRT_CUDNN_LIB"
  [ -d "$so" ] && so="$so/libcudnn.so.9"
  if [ -f "$so" ]; then
    shim="$(mktemp -d)"
    ln -s "$(readlink -f "$so")" "$shim/libcudnn.so"
    export LD_LIBRARY_PATH="$shim${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
echo "ATTNRT_CUDNN_LIB=${ATTNRT_CUDNN_LIB:-(unset: cuDNN from the loader path)}"
