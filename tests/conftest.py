"""Shared fixtures: a small random-weight model saved with zoo.saving, and a real server on it.

Random weights need no network and no shared files. The final 1x1 conv is rescaled so the
logits spread around zero: a fresh network's outputs all sit within 1e-4 of 0.5, which would
make every mask all-0 or all-1 and the equality tests vacuous.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `pytest` (unlike `python -m pytest`) does not add the cwd
    sys.path.insert(0, str(REPO))

from bench import server  # noqa: E402

# Fixtures that start a server, or run a whole study or final fit, as subprocesses: a test that
# uses one is `slow` (pytest.ini), so `pytest -m "not slow"` is the fast path. Tests that start
# such a process themselves carry the mark in their own file.
SLOW_FIXTURES = {
    "app_server",
    "serve",  # conftest: `python -m app` / gunicorn
    "smoke_run",  # test_ablations: the decoder_variants smoke study
    "search",  # test_distributed: a chief and two workers
    "measured",  # test_scaling: each point in its own process
    "cv_run",
    "killed_cv_run",
    "fit_run",  # test_cv: a cross-validated study, the final fit
    "halving_run",
}  # test_cv: a halved study


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def child_env(**extra) -> dict:
    """This environment for a child process, minus any $ZOO_MODEL, $ZOO_RUNTIME or $ZOO_TTA
    the caller did not pass: a developer's serving settings must not change what a test serves."""
    env = {
        key: value for key, value in os.environ.items() if key not in ("ZOO_MODEL", "ZOO_RUNTIME", "ZOO_TTA")
    }
    return {**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


@contextlib.contextmanager
def running_server(command: list[str], log_path: Path, **env):
    """Yield the URL of `command` once /health answers, then stop it (bench.server)."""
    with server.running_server(command=command, log_path=log_path, env=child_env(**env), cwd=REPO) as running:
        yield running.url


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """XDG_CACHE_HOME for child processes: the synthetic scenes a module's runs share."""
    return {"XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg"))}


@pytest.fixture(scope="session")
def small_model_file(tmp_path_factory) -> Path:
    import keras
    import numpy as np

    from zoo import saving, unet
    from zoo.config import DecoderConfig

    keras.utils.set_random_seed(0)  # the same model, and so the same masks, every run
    config = DecoderConfig(upsampler="bilinear", skip="concat", conv="separable", width=0.25)
    model = unet.build(config, weights=None)
    logits = unet.decoder_of(model).get_layer("logits")
    probe = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3)).astype("float32")
    raw = keras.ops.convert_to_numpy(model(probe, training=False))
    scale = 2.0 / max(float(raw.std()), 1e-12)
    logits.kernel.assign(logits.kernel * scale)
    logits.bias.assign((logits.bias - float(np.median(raw))) * scale)
    metadata = {
        "config": config.to_dict(),
        "threshold": 0.5,
        "metrics": {"building_iou": 0.123, "mean_iou": 0.456, "f1": 0.789},
        "data": {"name": "random weights, test fixture"},
    }
    return saving.save(model, tmp_path_factory.mktemp("model") / "model.keras", metadata)


@pytest.fixture(scope="session")
def small_segmenter(small_model_file):
    """The same file loaded in this process, to compare the server's answers against."""
    from zoo.predict import Segmenter

    return Segmenter.from_file(small_model_file)


@pytest.fixture(scope="session")
def app_server(small_model_file, tmp_path_factory):
    """Base URL of `python -m app` serving `small_model_file` on a free local port."""
    command = [*server.APP_COMMAND, "--model", str(small_model_file)]
    with running_server(command, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture
def serve(tmp_path):
    """`serve(command, **env)` starts a server and returns its URL once /health answers;
    each one is stopped after the test. See `running_server` for the port."""
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:

        def start(command: list[str], **env) -> str:
            log_path = tmp_path / f"server{next(numbers)}.log"
            return stack.enter_context(running_server(command, log_path, **env))

        yield start


@pytest.fixture
def in_process(cache_home, monkeypatch, capsys):
    """`in_process(main, *args)`: a command's `main` run in this process with the module's
    synthetic-data cache (`cache_home`, test_ablations.py), as (exit status, stdout, stderr).
    For refusals and finished runs, which stop before any training: a subprocess would add
    ~8 s of imports each."""
    for name, value in cache_home.items():
        monkeypatch.setenv(name, value)

    def run(main, *args) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def run_module():
    """`run_module("pkg.mod", *args, timeout=..., **env)`: `python -m pkg.mod args` run from
    the repository root, output captured as text."""

    def run(module: str, *args, timeout: float = 120, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=REPO,
            env=child_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
