"""Distributed search with KerasTuner's own chief/worker mode.

One chief runs the oracle (KerasTuner's gRPC server) and no trials; each worker asks it for a
trial, trains it, writes `trials/<id>.json` and its weights into OUT/STUDY, and reports the
score back. KerasTuner reads three environment variables, which `python -m ablations.run`
sets from `--chief` / `--worker ID` and `--oracle HOST:PORT` before keras_tuner is imported
(setting them by hand works too):

    KERASTUNER_TUNER_ID     "chief" on the chief, the worker's id on a worker
    KERASTUNER_ORACLE_IP    the chief's address; on the chief, the address it listens on
    KERASTUNER_ORACLE_PORT  the port

- OUT is one folder every process sees (one machine, or a shared file system): workers write
  the trial records there and the chief builds the report from them.
- Each worker loads the data and encodes its own cached features, exactly as a single process
  does; the chief loads the data only for the report and encodes nothing.
- The chief blocks in `tuner.search()` until every trial has ended and every worker has been
  told to stop, then writes the report: once, and atomically like every report file.
- A worker killed mid-trial is restarted with the same id: the oracle hands it back the trial
  it was running (`Oracle.create_trial` returns a known tuner id's ongoing trial). A worker
  that never comes back keeps the chief waiting for its trial.

This module imports no TensorFlow: `ablations.run` uses it before keras_tuner loads.
"""

from __future__ import annotations

import os
import socket

from training.errors import UserFacingError

TUNER_ID, ORACLE_IP, ORACLE_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"
CHIEF = "chief"  # KerasTuner takes any tuner id that contains this word for the chief


def configure(chief: bool, worker: str | None, oracle: str | None) -> None:
    """Turn --chief / --worker ID / --oracle HOST:PORT into KerasTuner's environment."""
    if chief and worker:
        raise UserFacingError("--chief and --worker exclude each other: one role per process")
    if (chief or worker) and not oracle:
        raise UserFacingError("--chief and --worker need --oracle HOST:PORT (the chief's address)")
    if oracle and not (chief or worker):
        raise UserFacingError("--oracle needs a role: --chief, or --worker ID")
    if worker is not None and (not worker.strip() or CHIEF in worker):
        raise UserFacingError(
            f"--worker {worker!r}: give a non-empty id without the word "
            f"'{CHIEF}' (KerasTuner takes such an id for the chief)"
        )
    if oracle:
        host, port = parse_address(oracle)
        os.environ.update({TUNER_ID: CHIEF if chief else worker, ORACLE_IP: host, ORACLE_PORT: str(port)})
    check_environment()


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserFacingError(f"--oracle {address!r}: expected HOST:PORT, e.g. 10.0.0.5:8000")
    return host, int(port)


def check_environment() -> None:
    if ORACLE_IP in os.environ:
        for name in (ORACLE_PORT, TUNER_ID):
            if not os.environ.get(name):
                raise UserFacingError(
                    f"{ORACLE_IP} is set but {name} is not; set both, or use "
                    "--chief / --worker ID with --oracle HOST:PORT"
                )


def role() -> str:
    """'single', 'chief' or 'worker', read from KerasTuner's environment variables."""
    if ORACLE_IP not in os.environ:
        return "single"
    return "chief" if CHIEF in os.environ[TUNER_ID] else "worker"


def tuner_id() -> str:
    return os.environ.get(TUNER_ID, "tuner0")


def address() -> str:
    return f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"


def check_port_free() -> None:
    """Fail in one sentence now rather than as a gRPC traceback once the data is loaded."""
    host, port = os.environ[ORACLE_IP], int(os.environ[ORACLE_PORT])
    try:
        family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), port))
    except OSError as error:
        raise UserFacingError(f"the chief cannot listen on {host}:{port}: {error}") from error


def announce_assignments(oracle, progress=print) -> None:
    """Make the chief's oracle say which worker gets, gets back, and ends each trial."""
    create_trial, end_trial = oracle.create_trial, oracle.end_trial

    def announced_create_trial(worker):
        known = oracle.ongoing_trials.get(worker)
        trial = create_trial(worker)
        if trial.status == "RUNNING":
            again = " again (it restarted mid-trial)" if known is not None else ""
            progress(
                f"[chief] trial {trial.trial_id} -> worker {worker}{again}: {trial.hyperparameters.values}"
            )
        elif trial.status == "STOPPED":
            progress(f"[chief] worker {worker}: no trials left, told to stop")
        return trial

    def announced_end_trial(trial):
        worker = next((w for w, t in oracle.ongoing_trials.items() if t.trial_id == trial.trial_id), "?")
        end_trial(trial)
        score = oracle.trials[trial.trial_id].score
        ended = sum(t.status != "RUNNING" for t in oracle.trials.values())
        progress(
            f"[chief] trial {trial.trial_id} <- worker {worker}: {trial.status}"
            + (f", {oracle.objective.name} {score:.3f}" if score is not None else "")
            + f" ({ended} of {oracle.max_trials} ended)"
        )

    oracle.create_trial, oracle.end_trial = announced_create_trial, announced_end_trial


def search_finished(oracle) -> bool:
    """True when a reloaded oracle has nothing left to hand out or wait for."""
    return (
        bool(oracle.max_trials)
        and len(oracle.trials) >= oracle.max_trials
        and all(t.status != "RUNNING" for t in oracle.trials.values())
    )


def describe_workers(records: list[dict]) -> str:
    """Which worker ran trials on which machine, for the report's Machine line."""
    ran = {}
    for record in records:
        key = (record.get("tuner_id", "?"), record.get("host", "?"), record.get("machine", "?"))
        ran[key] = ran.get(key, 0) + 1
    return "; ".join(f"worker {w} on {h} ({m}): {n} trials" for (w, h, m), n in sorted(ran.items()))
