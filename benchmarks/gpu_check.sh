#!/usr/bin/env bash
# The one prepared GPU check: on a machine with an NVIDIA GPU, in one go and under 10 minutes, it runs
#   1. the fused MAKA kernel's correctness checks on the real GPU (python -m apclip.benchmarks.kernel_maka_check)
#   2. the torch-cuda backend and MAKA TensorRT plugin checks (python -m apclip.benchmarks.gpu_backends_check)
#      and apclip-bench kernel (Triton MAKA vs eager fp32/fp16, matmul and the memory floor)
#   3. a random-weight ViT-B/16 checkpoint and bundle (python -m apclip.benchmarks.workload)
#   4. apclip-bench backends, parity and latency (+ PNG) for every backend on that bundle
# and writes every JSON, PNG and log into one folder, with summary.txt saying how each step ended:
# PASS, FAIL, TIMEOUT or SKIP (benchmarks/check_summary.py: a skipped check is never counted as passed).
# Backends that cannot run there (no TensorRT, no onnxruntime-gpu) are listed as unavailable with the
# reason; a step that fails or runs out of time is recorded and the next one still runs.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]      (default OUT_DIR: gpu_check_<UTC time>)
#
# Relative OUT_DIRs are taken from the repository root; paths must not contain spaces.
#
# --dry-run prints the steps without running them (works anywhere). Environment: PYTHON (default
# .venv/bin/python, else python3), GPU_CHECK_SECONDS (whole budget, default 570),
# GPU_CHECK_COMPILE=1 (also time torch.compile in step 2: minutes more).
# Exit: 0 every step passed; 1 a step failed or timed out (a parity fail included); 2 no usable GPU or
# no apclip, or nothing failed but a check was skipped (incomplete, not a pass).
set -uo pipefail

dry_run=0
out=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check: unknown option $arg (use --dry-run, --help)" >&2; exit 2 ;;
        *) out="$arg" ;;
    esac
done
cd "$(dirname "$0")/.."
out="${out:-gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}"
budget="${GPU_CHECK_SECONDS:-570}"
if [ -n "${PYTHON:-}" ]; then py="$PYTHON"; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
export ORT_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the real GPU, not the CPU interpreter
work="$out/work"
bundle="$work/bundle-ViT-B-16"
ckpt="$work/ViT-B-16.pt"
compile_flag="--no-compile"
[ "${GPU_CHECK_COMPILE:-0}" = "1" ] && compile_flag="--compile"

# name | seconds at most | command
steps=(
    "nvidia-smi|20|nvidia-smi"
    "kernel_check|120|$py -m apclip.benchmarks.kernel_maka_check --json $out/kernel_check.json"
    "gpu_backends|120|$py -m apclip.benchmarks.gpu_backends_check $compile_flag --json $out/gpu_backends.json"
    "kernel|120|$py -m apclip.benchmarks.cli kernel --k 400 600 --b 1 8 64 256 $compile_flag --json $out/kernel.json"
    "bundle|150|$py -m apclip.benchmarks.workload --preset ViT-B-16 --out $work"
    "backends|60|$py -m apclip.benchmarks.cli backends $bundle --ckpt $ckpt --json $out/backends.json"
    "parity|180|$py -m apclip.benchmarks.cli parity $bundle --ckpt $ckpt --workdir $work --json $out/parity.json"
    "latency|150|$py -m apclip.benchmarks.cli latency $bundle --ckpt $ckpt --workdir $work --runs 10 --json $out/latency.json --plot $out/latency.png"
)

if [ "$dry_run" = 1 ]; then
    echo "gpu_check (dry run): would write into $out, with $py, within ${budget} s:"
    for step in "${steps[@]}"; do
        IFS='|' read -r name limit command <<<"$step"
        printf '  %-13s <= %4s s  %s\n' "$name" "$limit" "$command"
    done
    exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidiactl ] && [ ! -e /etc/nv_tegra_release ]; then
    echo "gpu_check: no NVIDIA GPU here (no nvidia-smi, no /dev/nvidiactl): nothing to check. Run it on a CUDA" \
         "machine, or see the steps with --dry-run." >&2
    exit 2
fi
if ! "$py" -c "import apclip.benchmarks.cli" >/dev/null 2>&1; then
    # A machine with torch but without this checkout installed: link it in, no downloads.
    "$py" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || true
fi
if ! import_error=$("$py" -c "import apclip.benchmarks.cli" 2>&1); then
    echo "gpu_check: $py cannot import apclip (${import_error##*$'\n'}): set PYTHON to an environment with" \
         "apclip's dependencies (numpy, opencv-python-headless, safetensors, ftfy, regex, tqdm, torch, onnx," \
         "onnxscript, onnxruntime)" >&2
    exit 2
fi
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: $py has no CUDA-enabled torch that sees the GPU: nothing to check" >&2
    exit 2
fi

mkdir -p "$out" "$work"
summary="$out/summary.txt"
echo "gpu_check $(date -u +%FT%TZ) on $(hostname), python $py, budget ${budget} s" >"$summary"
results="$out/steps.tsv"
: >"$results"
for step in "${steps[@]}"; do
    IFS='|' read -r name limit command <<<"$step"
    left=$(( budget - SECONDS ))
    if [ "$left" -lt 20 ]; then
        echo "$name: not run, out of time"
        printf '%s\t%s\t%s\n' "$name" 2 0 >>"$results"  # SKIP: not checked, so not passed
        continue
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    echo "== $name (<= $limit s): $command"
    start=$SECONDS
    # word splitting of $command is intended: the paths above contain no spaces
    # shellcheck disable=SC2086
    timeout --kill-after=10 "$limit" $command >"$out/$name.log" 2>&1
    code=$?
    tail -n 40 "$out/$name.log"
    printf '%s\t%s\t%s\n' "$name" "$code" "$(( SECONDS - start ))" >>"$results"
done
# The verdict is one tested Python function (benchmarks/check_summary.py), not shell arithmetic.
"$py" -m apclip.benchmarks.check_summary "$results" | tee -a "$summary"
verdict=${PIPESTATUS[0]}
echo "total $SECONDS s; files in $out:" | tee -a "$summary"
ls -1 "$out" | tee -a "$summary"
exit "$verdict"
