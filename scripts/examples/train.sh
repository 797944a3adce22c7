#!/usr/bin/env bash
# Train a brainseg model on a scan directory.
#
# usage: scripts/examples/train.sh [DATA_DIR] [RUN_DIR] [CONFIG] [brainseg train options...]
#   DATA_DIR  labelled scans: nnU-Net/MSD (dataset.json, imagesTr/, labelsTr/), BraTS case
#             folders, or images/ + labels/ (see data/README.md)
#             default: demo_output/data (make one with: brainseg demo-data demo_output/data)
#   RUN_DIR   where checkpoints, metrics.csv, curves.png and tensorboard/ go
#             default: runs/demo
#   CONFIG    a YAML file from configs/        default: configs/demo.yaml
# Further options go to `brainseg train`, e.g. --max-minutes 30, --device cuda,
# --resume (continue an interrupted run), --set train.lr=0.003.
# Several GPUs: torchrun --nproc-per-node 4 -m brainseg train --data ... --out ...
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
fi

DATA="${1:-demo_output/data}"
RUN="${2:-runs/demo}"
CONFIG="${3:-configs/demo.yaml}"
shift $(( $# < 3 ? $# : 3 ))

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BRAINSEG="${BRAINSEG:-$ROOT/.venv/bin/brainseg}"
[[ -x "$BRAINSEG" ]] || BRAINSEG=brainseg

if [[ ! -f "$DATA/dataset.json" && "$DATA" == "demo_output/data" ]]; then
    "$BRAINSEG" demo-data "$DATA" --n 10
fi
exec "$BRAINSEG" train --data "$DATA" --out "$RUN" --config "$CONFIG" "$@"
