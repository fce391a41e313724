"""The WSGI entry point for production: the model path comes from $ZOO_MODEL.

    ZOO_MODEL=results/final/model.keras \\
        gunicorn -w 2 --threads 4 -b 127.0.0.1:8000 --timeout 120 'app.wsgi:app'

Without $ZOO_MODEL the served model is the one results/MODEL names (final/model.keras, which
`python -m training.fit` writes and points it at), else results/final/model.keras; a missing
file stops the worker with the message that names the command making it. `$ZOO_RUNTIME`
chooses the runtime as `--runtime` does for `python -m app` (default auto: the fastest current
export, else keras), and `$ZOO_TTA` the test-time views as `--tta` does (default: the model's).
Each runtime uses every core for one call, so on a small CPU `-w 1` or 2 is enough. Do not use
`--preload`: TensorFlow's thread pools do not survive a fork, so each worker must load the
model itself. Each worker holds one copy of the model and serialises its
calls, so `-w` is the number of predictions in flight; `--threads 4` (gunicorn's gthread
worker) lets a worker answer /health and parse other requests while one is predicted or
outlined; with the default sync worker, a busy worker answers nothing else, and /health waits
behind a 4096 x 4096 GeoJSON request. `--timeout 120` leaves room for a 4096 x 4096 image on
a small CPU, beyond the 60 s a GeoJSON request may take (`$ZOO_BUDGET_S`).
`$ZOO_MAX_BODY_MB` changes the body limit (default 64).
"""

from __future__ import annotations

import os
import sys

from app import BUDGET_S, MAX_BODY_MB, create_app
from app.model import BUDGET_ENV, RUNTIME_ENV, TTA_ENV, ModelUnavailable, load_for_serving, resolve_model_path
from zoo.predict import TTA_FROM_MODEL
from zoo.runtimes import AUTO

try:
    segmenter = load_for_serving(
        resolve_model_path(), os.environ.get(RUNTIME_ENV, AUTO), os.environ.get(TTA_ENV, TTA_FROM_MODEL)
    )
    app = create_app(
        segmenter=segmenter,
        max_body_mb=float(os.environ.get("ZOO_MAX_BODY_MB", MAX_BODY_MB)),
        budget_s=float(os.environ.get(BUDGET_ENV, BUDGET_S)),
    )
except ModelUnavailable as error:
    # gunicorn alone would say only "Worker failed to boot"; this line says why. Exit status 3
    # is gunicorn's WORKER_BOOT_ERROR: the master stops instead of respawning workers forever.
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(3) from None
