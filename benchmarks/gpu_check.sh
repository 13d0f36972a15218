#!/usr/bin/env bash
# The GPU check: what a CPU machine cannot test, run in at most ~8 minutes on a GPU machine from a fresh copy of
# the repository. Writes ONE JSON (default benchmarks/results/gpu_check.json; GPU_CHECK_OUT=path to change):
# the hardware block and, per step, "ran" / "failed" / "skipped" with the reason and the step's own results.
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine (on CPU it is a dry run: every CUDA step skips)
#
# Steps (each under its own time limit; one failing never stops the others):
#   install     CUDA build of the pinned torch (+ bitsandbytes first) when the GPU is there but torch cannot
#               see it; tolerant: no network → skipped, the check goes on with what is installed
#   gpu_tests   pytest -m gpu tests/gpu (bf16 autocast, SDPA, QLoRA 4-bit train+resume+merge, generation)
#               and tests/unit/methods/test_qlora.py (bitsandbytes' CUDA kernels when CUDA is there)
#   memory      benchmarks/chatglm3_memory.py: ChatGLM3-6B's real shape, random weights, LoRA and P-tuning v2
#               at the official demo's settings, against its 14,082 MiB / 18,426 MiB
#   qlora       benchmarks/qlora_memory.py (4-bit vs 16-bit base)
#   throughput  benchmarks/sft_throughput.py: glmtune against transformers' Trainer + peft
#   fsdp        2 processes under examples/accelerate/fsdp.yaml when there are 2 GPUs (+ DeepSpeed ZeRO-2/3
#               when deepspeed is installed)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu_check.json}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
STEPS="$WORK/steps.jsonl"
: > "$STEPS"
START=$(date +%s)
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

record() {  # record NAME STATUS DETAIL [RESULT_JSON_FILE]
  "$PY" - "$STEPS" "$1" "$2" "$3" "${4:-}" <<'PYEOF'
import json, sys
from pathlib import Path
steps, name, status, detail, result = sys.argv[1:6]
row = {"step": name, "status": status, "detail": detail[-2000:]}
if result and Path(result).is_file():
    try:
        row["result"] = json.loads(Path(result).read_text())
    except ValueError:
        row["result_unreadable"] = result
with open(steps, "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")
PYEOF
}

step() {  # step NAME SECONDS RESULT_JSON_OR_- COMMAND...
  local name=$1 limit=$2 result=$3; shift 3
  local log="$WORK/$name.log" t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  [ "$result" = "-" ] && result=""
  if [ $rc -eq 0 ]; then record "$name" ran "${took}s; $(tail -3 "$log" | tr '\n' ' ')" "$result"
  elif [ $rc -eq 124 ]; then record "$name" failed "timed out after ${limit}s; $(tail -20 "$log")" "$result"
  else record "$name" failed "exit $rc after ${took}s; $(tail -20 "$log")" "$result"; fi
  echo "   -> exit $rc in ${took}s"
}

cuda() { "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
gpus() { "$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0; }
pinned() { grep -o "\"$1==[^\"]*\"" pyproject.toml | head -1 | tr -d '"' | cut -d= -f3; }

# ------------------------------------------------------------------ install (only when it can help)
if command -v nvidia-smi > /dev/null && nvidia-smi > /dev/null 2>&1; then
  if ! "$PY" -c "import bitsandbytes" 2>/dev/null; then
    step install_bitsandbytes 60 - "$PY" -m pip install -q "bitsandbytes==$(pinned bitsandbytes)"
  fi
  if ! cuda; then  # the CPU build of the pinned torch: swap in the CUDA build of the same version
    step install_torch_cuda 150 - "$PY" -m pip install -q "torch==$(pinned torch)" \
      --index-url https://download.pytorch.org/whl/cu128
  else
    record install skipped "torch $("$PY" -c 'import torch; print(torch.__version__)') already sees CUDA"
  fi
else
  record install skipped "no NVIDIA GPU (nvidia-smi absent or failing): dry run, every CUDA step skips"
fi

# ------------------------------------------------------------------ the steps
if cuda; then
  step gpu_tests 150 - "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu -rs
  step qlora_tests 60 - "$PY" -m pytest -q -p no:cacheprovider tests/unit/methods/test_qlora.py -x
  step memory 90 benchmarks/results/chatglm3_memory.json "$PY" benchmarks/chatglm3_memory.py --steps 3
  step qlora 60 benchmarks/results/qlora_memory.json "$PY" benchmarks/qlora_memory.py
  step throughput 90 benchmarks/results/sft_throughput.json "$PY" benchmarks/sft_throughput.py --steps 20
else
  "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu -rs > "$WORK/gpu_tests.log" 2>&1
  record gpu_tests skipped "no CUDA: $(tail -1 "$WORK/gpu_tests.log")"
  for name in qlora_tests memory qlora throughput; do record $name skipped "no CUDA"; done
fi

N=$(gpus)
if [ "$N" -ge 2 ]; then
  "$PY" - "$WORK" <<'PYEOF'
import sys, yaml
from pathlib import Path
sys.path.insert(0, ".")
from tests.helpers import tiny_config, write_jsonl, review
from tests.tiny import save_tiny_llama
import random
work = Path(sys.argv[1])
model = save_tiny_llama(work / "model")
rng = random.Random(0)
rows = [{"text": review(rng, i % 2 == 0), "label": "pos" if i % 2 == 0 else "neg"} for i in range(96)]
data = write_jsonl(work / "reviews.jsonl", rows)
cfg = tiny_config(model, data, train={"max_steps": 4, "batch_size": 4, "save_steps": 2, "mixed_precision": "bf16"})
(work / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
PYEOF
  LAUNCH=("$PY" -m accelerate.commands.launch --num_processes 2)
  step fsdp 90 - "${LAUNCH[@]}" --config_file examples/accelerate/fsdp.yaml \
    --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer -m glmtune.cli train "$WORK/cfg.yaml" --output "$WORK/fsdp"
  if "$PY" -c "import deepspeed" 2>/dev/null; then
    for cfg in deepspeed-zero2 deepspeed-zero3; do
      step "$cfg" 90 - "${LAUNCH[@]}" --config_file "examples/accelerate/$cfg.yaml" \
        -m glmtune.cli train "$WORK/cfg.yaml" --output "$WORK/$cfg"
    done
  else
    record deepspeed skipped "deepspeed is not installed"
  fi
else
  record fsdp skipped "$N CUDA GPU(s): FSDP needs 2"
fi

# ------------------------------------------------------------------ the one JSON
"$PY" - "$STEPS" "$OUT" "$START" <<'PYEOF'
import json, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
steps_file, out, start = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
steps = [json.loads(line) for line in Path(steps_file).read_text().splitlines()]
try:
    from harness import hardware_block
    hardware = hardware_block()
except Exception as error:  # the check still says what ran
    hardware = {"error": repr(error)}
try:
    hardware["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
except (OSError, subprocess.SubprocessError):
    hardware["nvidia_smi"] = None
payload = {
    "check": "benchmarks/gpu_check.sh",
    "seconds": round(time.time() - start),
    "summary": {s["step"]: s["status"] for s in steps},
    "skipped": [f"{s['step']}: {s['detail']}" for s in steps if s["status"] == "skipped"],
    "steps": steps,
    "reported_mib": {"lora": 14082, "ptuning": 18426},
    "hardware": hardware,
}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in payload["summary"].items()))
failed = [s["step"] for s in steps if s["status"] == "failed"]
sys.exit(1 if failed else 0)
PYEOF
rc=$?
rm -rf "$WORK"
exit $rc
