#!/usr/bin/env bash
# One prepared GPU run of scripts/benchmark.py (issue 6 §4): the paper's timing claim on a lent H100/H200.
#
#   OUT=/some/folder bash scripts/gpu_benchmark.sh      # from the repository root; about 5 min, at most ~7.5
#
# 1. makes the repository importable with the torch already installed: wheels carried in .whl/ (the lent GPU
#    machines fetch nothing; `monai`, `pytorch-ignite` and `nibabel` are what the package needs beyond their image —
#    carry `.whl`, e.g. `pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1 pytorch-ignite==0.5.5
#    nibabel==5.4.2`) go to /tmp/site, then `pip install --no-deps --no-build-isolation -e .` (never replaces torch)
#    with PYTHONPATH=. as a fallback;
# 2. runs the benchmark with random weights (the timings depend on the architectures only), most important first:
#    MobileNet v1 at 576×448 (paper mammography, inpainter 8 levels; the paper's 75 maps/s) and DenseNet-121 at 256²
#    (paper chest X-ray, 7 levels), batch 8 and 1, plain with the iterative method on 2 images; then batch 8 with
#    bf16 autocast and channels-last + bf16 (both backbones), and torch.compile (MobileNet);
# 3. writes one JSON per run, env.txt and summary.md under $OUT (default: ./gpu_benchmark_out).
# A run that fails or overruns RUN_TIMEOUT_S (default 120) is reported and skipped; no run starts after DEADLINE_S
# (default 300) seconds, so the whole script ends within DEADLINE_S + RUN_TIMEOUT_S + start-up.
set -u
OUT="${OUT:-$PWD/gpu_benchmark_out}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
START=$(date +%s)
DEADLINE_S="${DEADLINE_S:-300}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-120}"
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
    if (( $(date +%s) - START > DEADLINE_S )); then say "SKIPPED $name (past DEADLINE_S=${DEADLINE_S}s)"; return; fi
    say "running $name"
    if timeout "$RUN_TIMEOUT_S" python3 scripts/benchmark.py --device cuda --warmup 3 --repeats 10 --out "$OUT/$name.json" "$@" >>"$LOG" 2>&1; then
        say "done $name"
    else
        say "FAILED $name (exit $?; see $LOG)"; FAILED=$((FAILED + 1))
    fi
}

for batch in 8 1; do
    run "mobilenet_v1_576x448_b${batch}" --backbone mobilenet_v1 --size 576 448 --batch "$batch" --iterative-images 2
    run "densenet121_256_b${batch}" --backbone densenet121 --size 256 256 --batch "$batch" --iterative-images 2
done
for variant in "amp:--amp" "channels_last_amp:--channels-last --amp"; do
    tag=${variant%%:*}; flags=${variant#*:}
    # shellcheck disable=SC2086  # flags are separate words on purpose
    run "mobilenet_v1_576x448_b8_${tag}" --backbone mobilenet_v1 --size 576 448 --batch 8 --iterative-images 0 $flags
    # shellcheck disable=SC2086
    run "densenet121_256_b8_${tag}" --backbone densenet121 --size 256 256 --batch 8 --iterative-images 0 $flags
done
# torch.compile on MobileNet only: MONAI's DenseNet-121 recompiles `_DenseLayer.forward` for every channel count and
# overran 110 s on an H200 (docs/benchmark.md)
run "mobilenet_v1_576x448_b8_compile" --backbone mobilenet_v1 --size 576 448 --batch 8 --iterative-images 0 --compile

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
