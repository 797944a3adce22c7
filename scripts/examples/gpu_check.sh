#!/usr/bin/env bash
# The GPU check: one prepared run of what GPU users run, for a lent GPU machine.
#
#   1. install: brainseg itself (no dependencies), plus the wheels in $WHEELS when the
#      machine lacks a package (the H200 machines of this workplace have torch but not
#      monai, nibabel, SimpleITK or nilearn, and no package registry). Make the wheels
#      here, for that machine's Python (3.12, x86-64):
#         python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#           --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#           --platform manylinux_2_17_x86_64 -d .whl monai==1.6.1 nibabel SimpleITK nilearn
#      (echo /.whl/ >> .git/info/exclude), and carry .whl along;
#   2. demo data (1 mm isotropic, so the 1 mm config trains at its own spacing);
#   3. train configs/brain_1mm_gpu.yaml (bf16, channels-last, deep supervision, its
#      128^3 patches and 32 base features) for STEPS steps under
#      `torchrun --standalone --nproc_per_node 1` (NCCL), sampling GPU memory each second;
#   4. predict one 1 mm brain with and without test-time mirroring;
#   5. write $OUT/gpu_check.json: step times, GPU memory, end-to-end seconds.
#
# Usage (on the GPU machine, from the repository root):
#   OUT=/tmp/gpu STEPS=300 bash scripts/examples/gpu_check.sh
set -euo pipefail

OUT=${OUT:-gpu_check_out}
STEPS=${STEPS:-300}
ITERS=${ITERS:-50}
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/brainseg_gpu_check}
mkdir -p "$OUT" "$WORK"
START=$(date +%s.%N)
export PYTHONUNBUFFERED=1

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("torch", torch.__version__, torch.cuda.get_device_name(0))
import brainseg, monai, nibabel  # noqa: F401
print("brainseg", brainseg.__version__, "from", brainseg.__file__)
EOF

echo "[gpu_check] demo data"
"$PY" -m brainseg demo-data "$WORK/data" --n 6 --n-test 1 --seed 0 > "$OUT/demo_data.log" 2>&1

nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -l 1 > "$OUT/gpu_samples.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT

EPOCHS=$(( (STEPS + ITERS - 1) / ITERS ))
echo "[gpu_check] train configs/brain_1mm_gpu.yaml: $EPOCHS epochs x $ITERS steps under torchrun (1 process, NCCL)"
T0=$(date +%s.%N)
"$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m brainseg train \
  --data "$WORK/data" --out "$WORK/run" --config configs/brain_1mm_gpu.yaml --device cuda --no-progress \
  --set train.epochs=$EPOCHS --set train.iters_per_epoch=$ITERS --set train.val_every=$EPOCHS \
  --set data.target_spacing=[1.0,1.0,1.0] > "$OUT/train.log" 2>&1
T1=$(date +%s.%N)

IMAGE=$(ls "$WORK"/data/imagesTs/*_0000.nii.gz | head -1)
echo "[gpu_check] predict $IMAGE without and with mirroring"
"$PY" -m brainseg predict --model "$WORK/run" --input "$IMAGE" --output "$WORK/pred_warm" --device cuda --no-progress \
  --set infer.mirror=false > "$OUT/predict_warm.log" 2>&1
T2=$(date +%s.%N)
"$PY" -m brainseg predict --model "$WORK/run" --input "$IMAGE" --output "$WORK/pred_plain" --device cuda --no-progress \
  --set infer.mirror=false > "$OUT/predict_plain.log" 2>&1
T3=$(date +%s.%N)
"$PY" -m brainseg predict --model "$WORK/run" --input "$IMAGE" --output "$WORK/pred_mirror" --device cuda --no-progress \
  --set infer.mirror=true > "$OUT/predict_mirror.log" 2>&1
T4=$(date +%s.%N)
kill $SMI 2>/dev/null || true
cp "$WORK/run/metrics.csv" "$OUT/metrics.csv"

"$PY" - "$OUT" "$START" "$T0" "$T1" "$T2" "$T3" "$T4" "$IMAGE" <<'EOF'
import csv, json, sys
import nibabel as nib
import torch

out, start, t0, t1, t2, t3, t4, image = sys.argv[1], *map(float, sys.argv[2:8]), sys.argv[8]
rows = list(csv.DictReader(open(f"{out}/metrics.csv")))
epochs = [(float(r["epoch_seconds"]), int(float(r["step"]))) for r in rows]
steps = [b - a for a, b in zip([0] + [s for _, s in epochs], [s for _, s in epochs])]
per_step = [sec / n for (sec, _), n in zip(epochs, steps) if n > 0]
memory = []
for line in open(f"{out}/gpu_samples.csv"):
    try:
        memory.append(float(line.split(",")[0]))
    except ValueError:
        pass
img = nib.load(image)
report = {
    "device": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "config": "configs/brain_1mm_gpu.yaml",
    "steps": epochs[-1][1] if epochs else 0,
    "seconds_per_step_first_epoch": per_step[0] if per_step else None,
    "seconds_per_step_later_epochs": (sum(per_step[1:]) / len(per_step[1:])) if len(per_step) > 1 else None,
    "data_wait_fraction": [float(r["data_wait_fraction"]) for r in rows],
    "gpu_memory_peak_mib": max(memory) if memory else None,
    "train_seconds": t1 - t0,
    "predict_image": image,
    "predict_image_shape": list(img.shape),
    "predict_seconds_first_call": t2 - t1,
    "predict_seconds_no_mirror": t3 - t2,
    "predict_seconds_mirror": t4 - t3,
    "end_to_end_seconds": t4 - start,
    "final_val_dice": next((float(r["val_dice_mean"]) for r in reversed(rows) if r.get("val_dice_mean")), None),
}
json.dump(report, open(f"{out}/gpu_check.json", "w"), indent=1)
print(json.dumps(report, indent=1))
EOF
