#!/usr/bin/env bash
# One call on a lent GPU machine (see DESIGN.md section 6: no registry there, its own Python and CUDA
# torch): build grpo._C from source, run the GPU tests, run the GPU benchmarks, and leave logs and the
# CSV rows under $OUT. Steps are chosen by name so one call can do only what is needed:
#
#   bash bench/gpu_session.sh build test:tests/test_gpu.py bench:loss bench:fused_linear bench:tune_triton
#
# Run it from a snapshot of a commit, so work in progress does not travel and the rows name the commit:
#   rm -rf .snap && mkdir .snap && git archive HEAD | tar -x -C .snap && git rev-parse --short HEAD > .snap/.rev
# (.snap is in .git/info/exclude; the device call carries it and runs `cd .snap && bash bench/gpu_session.sh ...`).
#
# Each step's output goes to $LOGS/<step>.log; a failed step is reported and the next one still runs.
# STEP_TIMEOUT (seconds, default 240) caps each step, so one hung step cannot eat the lease; a bench step
# takes its arguments from BENCH_ARGS_<name> (e.g. BENCH_ARGS_loss="--dtypes bf16"), else BENCH_ARGS;
# test steps run under pytest-xdist with TEST_WORKERS processes (default 12) when it is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
# The device tool returns at most 8 files, so the logs live in LOGS and every step re-packs them into
# $OUT/session.tgz (a step killed by its timeout still leaves the earlier steps' logs).
RESULT=${OUT:-/tmp/grpo-gpu-out}
OUT=${LOGS:-/tmp/grpo-gpu-logs}
mkdir -p "$OUT" "$RESULT"
pack() { tar -czf "$RESULT/session.tgz.tmp" -C "$OUT" . && mv "$RESULT/session.tgz.tmp" "$RESULT/session.tgz"; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
[ -f .rev ] && export GRPO_GIT_REV="$(cat .rev)"
status=0

step() {  # step NAME CMD...: runs CMD with its output in $OUT/NAME.log, prints the tail and the time
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  timeout -k 10 "${STEP_TIMEOUT:-240}" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n "${TAIL:-25}" "$OUT/$name.log"
  echo "== $name: exit $rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
  pack
}

for s in "$@"; do
  case "$s" in
    build)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
      cat "$OUT/gpu.txt"
      GRPO_BUILD_CUDA=1 GRPO_BUILD_JOBS=${GRPO_BUILD_JOBS:-6} step build $PY setup.py build_ext --inplace
      # build_ext --inplace does not map kernels/ to grpo.kernels as the editable install does
      [ -e grpo/kernels ] || ln -s ../kernels grpo/kernels
      grep -E "ptxas info|spill" "$OUT/build.log" > "$OUT/ptxas.txt" || true
      $PY -c "import grpo._C as C, grpo.kernels as K, torch; print('grpo._C', C.__file__, 'triton backend:', K.AVAILABLE, 'cuda:', torch.cuda.get_device_name())" ;;
    test:*)
      xdist=(); $PY -c "import xdist" 2>/dev/null && xdist=(-n "${TEST_WORKERS:-12}")
      step "test_$(basename "${s#test:}" .py)" $PY -m pytest -q -p no:cacheprovider "${xdist[@]}" "${s#test:}" ;;
    bench:*)
      # bench:loss runs bench/bench_loss.py; bench:tune_triton runs bench/tune_triton.py
      name=${s#bench:}; mod=bench_$name; [ -f "bench/$mod.py" ] || mod=$name
      [ -f "bench/$mod.py" ] || { echo "unknown bench step $s"; status=1; continue; }
      args_var="BENCH_ARGS_$name"
      step "bench_$name" $PY -m "bench.$mod" --device cuda ${!args_var:-${BENCH_ARGS:-}}
      cp bench/results/*.csv "$OUT/" 2>/dev/null ;;
    *) echo "unknown step $s"; status=1 ;;
  esac
done
pack
exit $status
