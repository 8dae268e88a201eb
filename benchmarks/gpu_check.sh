#!/usr/bin/env bash
# GPU check: on a machine with one CUDA GPU and a fresh checkout, prove the CUDA paths and measure.
#
#   bash benchmarks/gpu_check.sh            # about 5-8 minutes on one modern GPU, pip cache warm
#
# 1. installs what it needs (a python3.11 venv + requirements-dev.txt, as .ci/run does; kept if
#    .venv exists already);
# 2. runs the `cuda` tests (pytest -m cuda);
# 3. runs benchmarks/bench_train.py: SD 1.5-shaped at 512 px and SDXL-shaped at 1024 px, random
#    weights (built once from the bundled configs, cached under ~/.cache/ti-studio-bench), fp16,
#    batch 1, with and without gradient checkpointing; one table: steps/s, ratio to the floor,
#    peak GPU memory allocated, the pre-flight estimate and its calibration factor;
# 4. says whether the memory targets were met (SD 1.5 at 512 px under 3 GB; SDXL at 1024 px with
#    checkpointing under 10 GB).
# Everything it prints is also written under $GPU_CHECK_OUT (default: a new folder in /tmp).
# Exit status: 0 all passed, 1 a cuda test failed, 2 the benchmark failed, 3 no CUDA GPU visible.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu-check-XXXXXX)}
mkdir -p "$OUT"
say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }

say "1/4 install (python3.11 venv + requirements-dev.txt)"
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv || { say "python3.11 is needed (as in .ci/run)"; exit 3; }
fi
.venv/bin/pip install -q -r requirements-dev.txt 2>&1 | tail -n 5
PY=.venv/bin/python
if ! $PY - <<'EOF' | tee -a "$OUT/summary.txt"
import sys, torch
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} sees no CUDA GPU (torch.version.cuda={torch.version.cuda}); stop")
    sys.exit(3)
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, bf16 "
      f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
then
  exit 3
fi

say "2/4 pytest -m cuda"
$PY -m pytest -m cuda -q -rsxX --timeout=600 2>&1 | tee "$OUT/pytest-cuda.txt" | tail -n 40
TESTS=${PIPESTATUS[0]}
say "cuda tests exit status $TESTS (full log: $OUT/pytest-cuda.txt)"

say "3/4 bench_train.py: sd15 @ 512, sdxl @ 1024, fp16, batch 1, checkpointing off and on"
$PY benchmarks/bench_train.py --only sd15 sdxl --precision fp16 --batch 1 --checkpointing both --steps 10 \
  --json "$OUT/bench.json" 2>"$OUT/bench-stderr.txt" | tee "$OUT/bench-table.txt"
BENCH=${PIPESTATUS[0]}
if [ "$BENCH" != 0 ]; then
  say "bench_train.py failed (exit $BENCH); its stderr:"
  tail -n 40 "$OUT/bench-stderr.txt"
fi

say "4/4 memory targets"
if [ -f "$OUT/bench.json" ]; then
  $PY - "$OUT/bench.json" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
rows = json.load(open(sys.argv[1]))
targets = [("sd15", 512, None, 3 * 1024, "SD 1.5 shape at 512 px"),
           ("sdxl", 1024, True, 10 * 1024, "SDXL shape at 1024 px with checkpointing")]
for model, res, ckpt, limit, what in targets:
    for r in rows:
        o = r["ours"]
        if r["model"] != model or o["res"] != res or (ckpt is not None and o["ckpt"] != ckpt):
            continue
        mib = o["mem_mib"]
        verdict = "met" if mib < limit else f"MISSED by {mib - limit:.0f} MiB"
        f = r["floor"]
        print(f"{what} (checkpointing {'on' if o['ckpt'] else 'off'}): peak {mib:.0f} MiB allocated, "
              f"target < {limit} MiB: {verdict}; estimate {o['est_mib']:.0f} MiB "
              f"({100 * (o['est_mib'] - mib) / mib:+.0f}%); one step alone (the floor) {f['mem_mib']:.0f} MiB, "
              f"estimated {o['est_step_mib']:.0f} MiB, calibration factor {f['calib']}")
EOF
fi
ELAPSED=$(( $(date +%s) - T0 ))
say "done in ${ELAPSED}s$( [ "$ELAPSED" -gt 480 ] && echo ' (over the 8 minute budget: say so with the table)')"
say "results in $OUT: paste bench-table.txt and summary.txt into benchmarks/README.md with the date and the GPU"
if [ "$TESTS" != 0 ]; then exit 1; fi
if [ "$BENCH" != 0 ]; then exit 2; fi
exit 0
