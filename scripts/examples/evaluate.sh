#!/usr/bin/env bash
# Score predicted masks against reference masks: Dice, HD95 (mm) and volumes per label.
#
# usage: scripts/examples/evaluate.sh [PRED_DIR] [REF_DIR] [OUT_DIR] [brainseg evaluate options...]
#   PRED_DIR  predicted masks (ID.nii.gz)            default: demo_output/predictions
#   REF_DIR   reference masks, same ids              default: demo_output/data/labelsTs
#   OUT_DIR   gets metrics.csv and summary.json      default: demo_output/evaluation
# Further options go to `brainseg evaluate`, e.g. --labels 1,2,3.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
fi

PRED="${1:-demo_output/predictions}"
REF="${2:-demo_output/data/labelsTs}"
OUT="${3:-demo_output/evaluation}"
shift $(( $# < 3 ? $# : 3 ))

# The brainseg of the repository's .venv (make install) if there is one, else the one on PATH.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BRAINSEG="${BRAINSEG:-$ROOT/.venv/bin/brainseg}"
[[ -x "$BRAINSEG" ]] || BRAINSEG=brainseg

exec "$BRAINSEG" evaluate --pred "$PRED" --ref "$REF" --out "$OUT" "$@"
