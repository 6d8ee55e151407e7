#!/usr/bin/env bash
# One-GPU throughput check of nnunet_xfer (target: <= 8 minutes on one modern GPU).
#
#   benchmarks/gpu_check.sh [--cpu-smoke] [--keep] [WORKDIR]
#
# 1. a 60-case 512² phantom, converted and planned by nnU-Net (own nnU-Net folders in WORKDIR);
# 2. a short `rec` pretraining (images/s from its store entry);
# 3. 200 training iterations each of nnUNetTrainer, XferRecTrainer_nall (initialised from the rec
#    checkpoint) and XferScratchTrainer_nall on the fcn_resnet50 torchvision plans, timed after 10
#    warm-up iterations with nnU-Net's own data loaders;
# and prints iterations/s, images/s and peak GPU memory as a Markdown table.
# --cpu-smoke: the same pipeline on 16 cases at 64², 3+3 iterations, on the CPU (checks the script).
set -euo pipefail

SMOKE=0; KEEP=0; WORK=""
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) WORK="$arg" ;;
  esac
done

HERE="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${VIRTUAL_ENV:-$HERE/.venv}/bin"
[ -x "$BIN/nnunet-xfer" ] || BIN="$(dirname "$(command -v nnunet-xfer)")"
PY="$BIN/python"
if [ -z "$WORK" ]; then WORK="$(mktemp -d -t nnunet_xfer_gpu_check.XXXXXX)"; fi
if [ "$KEEP" = 0 ]; then trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"

if [ "$SMOKE" = 1 ]; then
  CASES=16; SIZE=64; ITERS=3; WARMUP=3; PRE_ITERS=5; DEVICE=cpu; NP=1
  export nnUNet_n_proc_DA=1 nnUNet_compile=false
else
  CASES=60; SIZE=512; ITERS=200; WARMUP=10; PRE_ITERS=300; DEVICE=cuda; NP=8
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device visible to torch; use --cpu-smoke to check the script on CPU" >&2; exit 1; }
fi

DS=992
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" \
       nnUNet_results="$WORK/nnUNet_results" MPLBACKEND=Agg
eval "$("$BIN/nnunet-xfer" env)"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
LOG="$WORK/gpu_check.log"
T0=$SECONDS
stage() { echo "[$((SECONDS - T0)) s] $*" >&2; }

stage "phantom: $CASES cases at ${SIZE}²"
"$BIN/nnunet-xfer" phantom "$WORK/phantom" --cases "$CASES" --size "$SIZE" --observers 2 \
  --observer-cases 2 >>"$LOG" 2>&1
stage "convert + nnUNetv2_plan_and_preprocess"
"$BIN/nnunet-xfer" convert --cases "$WORK/phantom/cases.csv" -d "$DS" -n GpuCheck --sizes 5 >>"$LOG" 2>&1
# nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): it must not be 0 here.
nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-$NP}" "$BIN/nnUNetv2_plan_and_preprocess" -d "$DS" -c 2d \
  -np "$NP" >>"$LOG" 2>&1
stage "torchvision plans variant fcn_resnet50"
"$BIN/nnunet-xfer" plan -d "$DS" --arch fcn_resnet50 >>"$LOG" 2>&1
stage "rec pretraining: $PRE_ITERS iterations"
"$BIN/nnunet-xfer" pretrain -d "$DS" -s rec --iterations "$PRE_ITERS" --device "$DEVICE" >>"$LOG" 2>&1

# Time ITERS train_step calls of a trainer (after WARMUP) with nnU-Net's own data pipeline.
bench() {  # TRAINER PLANS: appends one table row to $ROWS; nnU-Net's own output goes to $LOG
  "$PY" - "$DS" "$1" "$2" "$DEVICE" "$ITERS" "$WARMUP" "$ROWS" <<'PY' >>"$LOG" 2>&1
import sys, time, torch
from nnunetv2.run.run_training import get_trainer_from_args
ds, trainer_name, plans, device = sys.argv[1:5]
iters, warmup, rows = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
trainer = get_trainer_from_args(ds, "2d", 0, trainer_name, plans, device=torch.device(device))
trainer.disable_checkpointing = True
trainer.on_train_start()
trainer.on_epoch_start()
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
for _ in range(warmup):
    trainer.train_step(next(trainer.dataloader_train))
sync()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
for _ in range(iters):
    trainer.train_step(next(trainer.dataloader_train))
sync()
seconds = time.perf_counter() - t
peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if device == "cuda" else "n/a (CPU)"
bs = trainer.configuration_manager.batch_size
with open(rows, "a") as f:
    f.write(f"| {trainer_name} | {plans} | {bs} | {iters / seconds:.2f} | {iters * bs / seconds:.1f} | {peak} |\n")
for dl in (trainer.dataloader_train, trainer.dataloader_val):
    if hasattr(dl, "_finish"):
        dl._finish()
PY
}

stage "throughput: $ITERS iterations per trainer on $DEVICE"
ROWS="$WORK/rows.md"
: >"$ROWS"
# The torchvision networks have no deep-supervision outputs: an Xfer trainer builds them without
# (plain nnUNetTrainer would not), so the variant runs as XferScratchTrainer_nall.
for run in "nnUNetTrainer nnUNetPlans" "XferRecTrainer_nall nnUNetPlans" \
           "XferScratchTrainer_nall nnUNetPlans_fcn_resnet50"; do
  set -- $run
  bench "$1" "$2" || echo "| $1 | $2 | failed: see $LOG | | | |" >>"$ROWS"
done
PRE_IPS="$("$PY" -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['images_per_second']:.1f}\")" \
  "$nnUNet_results/Dataset${DS}_GpuCheck/nnunet_xfer_pretrained/nnUNetPlans__2d/rec.json")"

GPU="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() and '$DEVICE' == 'cuda' else 'CPU')")"
echo
echo "nnunet_xfer gpu_check on $GPU: $CASES cases at ${SIZE}², $ITERS timed iterations (after $WARMUP warm-up), $((SECONDS - T0)) s in all"
echo
echo "| trainer | plans | batch | iterations/s | images/s | peak GPU memory (GiB) |"
echo "|---|---|---|---|---|---|"
cat "$ROWS"
echo
echo "rec pretraining ($PRE_ITERS iterations): $PRE_IPS images/s"
echo "log: $LOG"
