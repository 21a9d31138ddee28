#!/usr/bin/env bash
# One prepared GPU run of scripts/benchmark.py (issue 6 §4): the paper's timing claim on a lent H100/H200.
#
#   OUT=/some/folder bash scripts/gpu_benchmark.sh      # from the repository root; about 5 min, at most ~8
#
# 1. makes the repository importable with the torch already installed: wheels carried in .whl/ (the lent GPU
#    machines fetch nothing; `monai` is the only package the benchmark needs beyond their image — carry `.whl` with
#    monai-*.whl, e.g. `pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1`) go to /tmp/site, then
#    `pip install --no-deps --no-build-isolation -e .` (never replaces torch) with PYTHONPATH=. as a fallback;
# 2. runs the benchmark with random weights (the timings depend on the architectures only):
#    MobileNet v1 at 576×448 (paper mammography, inpainter 8 levels) and DenseNet-121 at 256² (paper chest X-ray,
#    7 levels), batch 1 and 8, each plain / channels-last / bf16 autocast / channels-last + bf16, the iterative
#    method on 2 images in the plain runs;
# 3. writes one JSON per run, env.txt and summary.md under $OUT (default: ./gpu_benchmark_out).
# A run that fails or overruns its time limit is reported and skipped; the script stops starting runs after 7 min.
set -u
OUT="${OUT:-$PWD/gpu_benchmark_out}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$(date +%s)
say() { echo "[gpu_benchmark $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

say "python: $(command -v python3) ($(python3 --version 2>&1))"
if ! python3 -c "import torch" 2>/dev/null; then
    say "ERROR: torch is not installed in python3; install the CUDA build of torch first (e.g. pip install torch==2.13.0)."
    exit 1
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing carried wheels: $(ls .whl | tr '\n' ' ')"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" || say "WARNING: wheel install failed"
fi
say "installing the repository: pip install --no-deps --no-build-isolation -e ."
python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 \
    || say "WARNING: pip install -e . failed (see $LOG); using PYTHONPATH=$PWD instead"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import monai, scipy, matplotlib, cfattr_monai" 2>>"$LOG"; then
    say "ERROR: monai/scipy/matplotlib or cfattr_monai not importable (see $LOG); carry .whl with monai-*.whl."
    exit 1
fi
{
    nvidia-smi 2>&1 || echo "nvidia-smi not found"
    python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None); print('monai', monai.__version__)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "ERROR: torch.cuda.is_available() is False; this script measures the GPU."
    exit 1
fi

FAILED=0
run() {  # run NAME ARGS...: one benchmark process with a time limit, skipped after the global deadline
    local name=$1; shift
    if (( $(date +%s) - START > 420 )); then say "SKIPPED $name (past the 7-minute mark)"; return; fi
    say "running $name"
    if timeout 150 python3 scripts/benchmark.py --device cuda --warmup 3 --repeats 10 --out "$OUT/$name.json" "$@" >>"$LOG" 2>&1; then
        say "done $name"
    else
        say "FAILED $name (exit $?; see $LOG)"; FAILED=$((FAILED + 1))
    fi
}

for batch in 1 8; do
    run "mobilenet_v1_576x448_b${batch}" --backbone mobilenet_v1 --size 576 448 --batch "$batch" --iterative-images 2
    run "densenet121_256_b${batch}" --backbone densenet121 --size 256 256 --batch "$batch" --iterative-images 2
done
for variant in "channels_last:--channels-last" "amp:--amp" "channels_last_amp:--channels-last --amp"; do
    tag=${variant%%:*}; flags=${variant#*:}
    for batch in 1 8; do
        # shellcheck disable=SC2086  # flags are separate words on purpose
        run "mobilenet_v1_576x448_b${batch}_${tag}" --backbone mobilenet_v1 --size 576 448 --batch "$batch" --iterative-images 0 $flags
        # shellcheck disable=SC2086
        run "densenet121_256_b${batch}_${tag}" --backbone densenet121 --size 256 256 --batch "$batch" --iterative-images 0 $flags
    done
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md" | tee -a "$LOG"
import json, sys
from pathlib import Path
from cfattr_monai.report.tables import timing_table
out = Path(sys.argv[1])
records = []
for path in sorted(out.glob("*.json")):
    record = json.loads(path.read_text())
    record["backbone"] = f"{record['backbone']} ({path.stem})"
    records.append(record)
print(timing_table(records) if records else "no benchmark JSON was written")
PY
say "finished: $FAILED failed run(s); results in $OUT"
