#!/usr/bin/env bash
# GPU kernel benchmark (issue 9): onnxruntime-gpu from the split wheel, then the batch-mode kernel benchmark
# with its CPU baseline in the same run. See docs/gpu.md for the whole sequence.
#
#   scripts/gpu_bench.sh prepare   # here, once: ../shared/gpu/prepare_wheel.sh -> .gpu1/ .. .gpu5/ (ignored)
#   scripts/gpu_bench.sh stage     # on the GPU machine, once per carried part: keep it in /tmp/gpuwheel
#   scripts/gpu_bench.sh run       # on the GPU machine, last: reassemble, check sha256, install, benchmark
#
# `run` writes to $OUT (or /tmp/gpu_out): bench_cuda.json (the result object), bench_cuda.txt (stderr and
# diagnostics), nvidia-smi.txt, providers.txt. Only numpy and onnxruntime(-gpu) must be importable.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${GPU_STAGE:-/tmp/gpuwheel}
SITE=${GPU_SITE:-/tmp/site}
QPB=${QPB:-1,8,16,32}
CALLS=${CALLS:-300}

stage() {
  mkdir -p "$STAGE"
  local found=0
  for d in .gpu1 .gpu2 .gpu3 .gpu4 .gpu5; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do cp -f "$f" "$STAGE/"; found=1; done
  done
  [ "$found" = 1 ] || { echo "no .gpuN/ folder arrived: name it in carry" >&2; return 1; }
  ls -la "$STAGE"
}

case "${1:-run}" in
  prepare)
    bash "${PREPARE_WHEEL:-../shared/gpu/prepare_wheel.sh}" "${2:-1.31.1}"
    ;;
  stage)
    stage
    ;;
  run)
    out=${OUT:-/tmp/gpu_out}
    mkdir -p "$out"
    stage 2>/dev/null || true  # the last part usually travels with this call
    whl_name=$(cat "$STAGE/WHEEL_NAME")
    whl=/tmp/$whl_name
    cat "$STAGE"/part.* > "$whl"
    echo "$(cat "$STAGE/SHA256")  $whl" | sha256sum -c
    python3 -m pip install -q --no-deps --no-index --target "$SITE" "$whl"
    # CUDA 13 / cuDNN 9 libraries from pip packages (torch, nvidia-*): put their folders on the loader path
    libdirs=$(python3 - <<'PY'
import glob, os, site, sys
roots = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
pats = ("libcudart.so*", "libcublasLt.so*", "libcublas.so*", "libcudnn.so*", "libcufft.so*", "libcurand.so*")
dirs = []
for r in roots:
    for pat in pats:
        for f in glob.glob(os.path.join(r, "**", pat), recursive=True):
            d = os.path.dirname(f)
            if d not in dirs:
                dirs.append(d)
print(":".join(dirs))
PY
)
    export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    { nvidia-smi || true; } > "$out/nvidia-smi.txt" 2>&1
    PYTHONPATH=$SITE:. python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" \
      | tee "$out/providers.txt"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$out/providers.txt"
    # `bidder bench kernel --provider cuda --queries-per-batch $QPB --calls $CALLS --json` without the CLI
    # (click is not installed here); the CPU baseline runs first in the same process
    PYTHONPATH=$SITE:. python3 -c "import json, sys; from streams.harness import bench_kernel as b; \
r = b.run_batch_bench(provider='cuda', queries_per_batch=[int(k) for k in sys.argv[1].split(',')], \
calls=int(sys.argv[2]), warmup=50); print(json.dumps(r)); sys.exit(2 if b.batch_failed(r) else 0)" "$QPB" "$CALLS" \
      > "$out/bench_cuda.json" 2> "$out/bench_cuda.txt" || echo "bench exit $? (see errors in the JSON)" >&2
    PYTHONPATH=$SITE:. python3 -c "import json, sys; from streams.harness.bench_kernel import print_batch_report as p; \
p(json.load(open(sys.argv[1])))" "$out/bench_cuda.json" || tail -n 50 "$out/bench_cuda.txt"
    ;;
  *)
    echo "usage: $0 prepare|stage|run" >&2
    exit 2
    ;;
esac
