#!/bin/bash
# The adaptation curve in the order the targets need it (each step skips finished points, so
# rerun it as later seeds' fold weights land), then its table and plot. From the repository root:
#   bash experiments/adapt/run_all.sh ../shared/data/oam_buildings
set -euo pipefail
DATA=${1:-../shared/data/oam_buildings}
PY=${PYTHON:-.venv/bin/python}
curve() { "$PY" -m experiments.adapt.curve --data "$DATA" "$@"; }
curve --modes adapt --ks 0,64
curve --modes unlabelled
curve --modes scratch,both,replay --ks 64
curve --modes adapt --ks 8,16,32,128
curve --modes transductive
curve --modes scratch --ks 8,16,32,128
curve --modes both --ks 8,16,32,128
curve --modes tutorial --ks 64
"$PY" -m experiments.adapt.table
