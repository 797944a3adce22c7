#!/usr/bin/env bash
# Batch inference: segment every scan in a folder with a trained brainseg model.
#
# usage: scripts/examples/predict_folder.sh [RUN] [INPUT_DIR] [OUTPUT_DIR] [brainseg predict options...]
#   RUN         run folder (its checkpoint_final/last/best.pt) or a checkpoint file
#               default: demo_output/run
#   INPUT_DIR   scans: ID_0000.nii.gz [ID_0001...] files, plain scans, an MSD root or BraTS
#               case folders; never written to       default: demo_output/data/imagesTs
#   OUTPUT_DIR  gets ID.nii.gz masks (each in its scan's own grid) and volumes.csv (mm3)
#               default: demo_output/predictions
# Further options go to `brainseg predict`, e.g. --overwrite, --save-probabilities,
# --device cuda:1, --set infer.mirror=true. Cases whose mask exists are skipped.
# Several GPUs: torchrun --nproc-per-node 4 -m brainseg predict ... (each rank takes
# every 4th case and writes volumes_rank{r}.csv).
# Exit status: 0 if every case was written or skipped, 1 if any case failed.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
fi

RUN="${1:-demo_output/run}"
INPUT="${2:-demo_output/data/imagesTs}"
OUTPUT="${3:-demo_output/predictions}"
shift $(( $# < 3 ? $# : 3 ))

# The brainseg of the repository's .venv (make install) if there is one, else the one on PATH.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BRAINSEG="${BRAINSEG:-$ROOT/.venv/bin/brainseg}"
[[ -x "$BRAINSEG" ]] || BRAINSEG=brainseg

exec "$BRAINSEG" predict --model "$RUN" --input "$INPUT" --output "$OUTPUT" "$@"
