"""The development server.

    python -m app [--model PATH] [--runtime R] [--tta VIEWS] [--host H] [--port P] [--max-body-mb MB]
                  [--budget-s S]

Serves the model `results/MODEL` names (`final/model.keras` once `python -m training.fit` ran;
see `app/model.py`). For production use gunicorn; the command is in `app/wsgi.py`. A missing
or corrupted model, or an explicitly chosen runtime without a current export, stops the start
with one message on stderr (a missing one names the command that makes it) and exit status 1.
Each request runs in its own thread, so /health answers while others are being served.
"""

from __future__ import annotations

import argparse
import os

from app import BUDGET_S, MAX_BODY_MB, create_app
from app.model import (
    BUDGET_ENV,
    DEFAULT_MODEL,
    ENV,
    POINTER,
    RUNTIME_CHOICES,
    RUNTIME_ENV,
    TTA_ENV,
    ModelUnavailable,
    load_for_serving,
    resolve_model_path,
    runtime_of,
)
from zoo.predict import TTA_CHOICES, TTA_FROM_MODEL


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        help=f"a .keras file saved by zoo.saving (default: ${ENV}, "
        f"else the one results/{POINTER} names, else "
        f"results/{DEFAULT_MODEL.as_posix()}: what python -m training.fit writes)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=os.environ.get(RUNTIME_ENV, RUNTIME_CHOICES[0]),
        help=f"what runs the forward pass (default: ${RUNTIME_ENV}, else auto: the "
        "fastest one `python -m zoo.export` made for this model, else keras)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=os.environ.get(TTA_ENV, TTA_FROM_MODEL),
        help=f"test-time views (default: ${TTA_ENV}, else model: the ones the model's "
        "metadata names; none: one pass a scale, the fastest)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--max-body-mb", type=float, default=None, help="largest request body accepted (default 64)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=float(os.environ.get(BUDGET_ENV, BUDGET_S)),
        help=f"seconds a GeoJSON request may take before it gets a 503 (default: "
        f"${BUDGET_ENV}, else {BUDGET_S:g})",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    path = resolve_model_path(args.model)
    try:
        segmenter = load_for_serving(path, args.runtime, args.tta)
    except ModelUnavailable as error:
        raise SystemExit(f"error: {error}") from None
    app = create_app(segmenter=segmenter, max_body_mb=args.max_body_mb or MAX_BODY_MB, budget_s=args.budget_s)
    print(
        f"serving {path} through {runtime_of(segmenter)} with test-time views {segmenter.tta!r} "
        f"on http://{args.host}:{args.port}/",
        flush=True,
    )
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
