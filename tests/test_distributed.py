"""KerasTuner's chief/worker mode through `python -m ablations.run --chief / --worker ID`.

One search on loopback does the work of several tests: a chief and two workers run the
`loss` study (4 trials, smoke budget, synthetic data, random encoder weights); worker w1 is
killed with SIGKILL while training its first trial and restarted with the same id. The
tests then read what the processes wrote. Every process runs in its own session, under a
deadline, and is killed in a `finally`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.server import free_port

REPO = Path(__file__).resolve().parents[1]
STUDY = "loss"
LOSSES = ["bce", "dice", "bce_dice", "focal"]
DEADLINE_S = 420  # the whole distributed search, on a loaded 2-core machine


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "ablations.run", *args]


class Processes:
    """Started processes with their logs; `stop_all` kills whatever is still running."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env, self.running = folder, env, {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")
        process = subprocess.Popen(
            cli(*args), cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()  # the child holds its own copy
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        process = self.running[name]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for name in self.running:
            self.kill(name)

    def wait_for(self, condition, what: str, deadline: float) -> None:
        while not condition():
            for name, process in self.running.items():
                if process.poll() not in (None, 0, -signal.SIGKILL):
                    raise AssertionError(
                        f"{name} exited with {process.returncode} while waiting "
                        f"for {what}:\n{self.log(name)[-3000:]}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}:\n"
                    + "\n".join(f"--- {n}\n{self.log(n)[-1500:]}" for n in self.running)
                )
            time.sleep(0.1)


def records(study: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in (study / "trials").glob("*.json")}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """Chief + workers w1, w2; w1 killed mid-trial and restarted; returns what they left."""
    folder = tmp_path_factory.mktemp("distributed")
    out, oracle = folder / "results", f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XDG_CACHE_HOME": str(folder / "cache"),
        "PYTHONPATH": str(REPO),
    }
    env.pop("ZOO_MODEL", None)
    common = [STUDY, "--budget", "smoke", "--out", str(out), "--weights", "none", "--oracle", oracle]
    processes = Processes(folder, env)
    started, deadline = time.monotonic(), time.monotonic() + DEADLINE_S
    try:
        chief = processes.start("chief", [*common, "--chief"])
        # The chief writes the synthetic data first: data's cache folder is not yet
        # safe for three processes writing it at once (rmdir race in write_synthetic_folder).
        processes.wait_for(lambda: "data: SYNTHETIC" in processes.log("chief"), "the chief's data", deadline)
        processes.start("w1", [*common, "--worker", "w1"])
        processes.start("w2", [*common, "--worker", "w2"])
        # Mid-trial: w1 has its first trial and has encoded its training tiles, so it is
        # training (the first epoch includes tracing: the longest stretch of a trial).
        processes.wait_for(
            lambda: re.search(r"\[worker w1\] trial \d+ \(.*encoded copy 2/2", processes.log("w1"), re.S),
            "w1 to train",
            deadline,
        )
        processes.kill("w1")
        killed_trial = re.search(r"\[worker w1\] trial (\d+) \(", processes.log("w1")).group(1)
        at_kill = records(out / STUDY)
        processes.start("w1-restarted", [*common, "--worker", "w1"])
        processes.wait_for(lambda: chief.poll() is not None, "the chief to finish", deadline)
        for name in ("w2", "w1-restarted"):
            processes.wait_for(lambda: processes.running[name].poll() is not None, name, deadline)
        seconds = time.monotonic() - started
    finally:
        processes.stop_all()
    print(f"distributed loss study (chief + 2 workers, one killed and restarted): {seconds:.0f}s")
    return {
        "study": out / STUDY,
        "out": out,
        "logs": {n: processes.log(n) for n in processes.running},
        "codes": {n: p.returncode for n, p in processes.running.items()},
        "killed_trial": killed_trial,
        "at_kill": at_kill,
    }


def test_every_process_exits_cleanly(search):
    codes = search["codes"]
    assert codes == {"chief": 0, "w1": -signal.SIGKILL, "w2": 0, "w1-restarted": 0}, {
        name: log[-2000:] for name, log in search["logs"].items() if codes[name] not in (0, -9)
    }


def test_every_trial_runs_exactly_once_and_the_table_is_complete(search):
    study = search["study"]
    records_now = records(study)
    assert sorted(records_now) == ["0", "1", "2", "3"]
    trials = pd.read_csv(study / "trials.csv")
    assert sorted(trials["trial_id"].astype(str)) == ["0", "1", "2", "3"]
    assert sorted(trials["recipe_loss"]) == sorted(LOSSES)
    table = (study / "table.md").read_text()
    assert "**(selected)**" in table and all(loss in table for loss in LOSSES)
    assert (study / "best" / "model.keras").is_file()
    assert STUDY in (search["out"] / "README.md").read_text()
    started = re.findall(r"\[worker (w\d)\] trial (\d+) \(", "".join(search["logs"].values()))
    ids = [trial for _, trial in started]
    # Only the killed trial started twice: once in w1 before the kill, once after its restart.
    assert sorted(ids) == sorted(["0", "1", "2", "3", search["killed_trial"]]), started


def test_the_killed_workers_trial_is_handed_back_and_nothing_finished_is_redone(search):
    killed, logs, study = search["killed_trial"], search["logs"], search["study"]
    assert killed not in search["at_kill"], "w1 was killed after its trial was recorded"
    assert f"[chief] trial {killed} -> worker w1 again" in logs["chief"]
    assert f"[worker w1] trial {killed} (" in logs["w1-restarted"]
    record = json.loads((study / "trials" / f"{killed}.json").read_text())
    assert record["tuner_id"] == "w1"
    now = records(study)
    assert all(now[trial] == mtime for trial, mtime in search["at_kill"].items()), "a finished trial re-ran"


def test_no_half_written_files(search):
    study = search["study"]
    assert not [p.name for p in study.rglob("*") if ".tmp" in p.name]
    for record in (study / "trials").glob("*.json"):
        for suffix in (".weights.h5", ".samples.npy"):
            assert (record.with_name(record.stem + suffix)).stat().st_size > 0, record.name
        assert json.loads(record.read_text())["metrics"]["val_building_iou"] >= 0


def test_roles_are_visible_and_only_the_chief_reports(search):
    logs = search["logs"]
    chief = logs["chief"]
    assert "[chief] serving the oracle on 127.0.0.1:" in chief
    assert len(re.findall(r"\[chief\] trial \d+ -> worker w[12]", chief)) == 5  # 4 + the hand-back
    assert len(re.findall(r"\[chief\] trial \d+ <- worker w[12]: COMPLETED", chief)) == 4
    assert chief.count("done in") == 1 and chief.index("<- worker") < chief.index("done in")
    assert "[worker w2] trial" in logs["w2"]
    for worker in ("w2", "w1-restarted"):
        assert "the chief writes the report" in logs[worker] and "done in" not in logs[worker]
        assert "encoding training tiles" in logs[worker]  # each worker encodes its own features
    assert "encoding" not in chief
    context = json.loads((search["study"] / "context.json").read_text())
    assert "worker w1 on" in context["machine"] and "worker w2 on" in context["machine"]
    assert "--chief" in context["command"]


def test_grid_oracle_keeps_gridsearch_order_but_never_makes_workers_wait(tmp_path):
    import keras_tuner

    from ablations import oracles, studies

    def space():
        hp = keras_tuner.HyperParameters()
        studies.STUDIES["decoder_variants"].space(hp, studies.DEFAULT_DECODER, 1)
        return hp

    def oracle(kind, name):
        made = kind(
            objective=keras_tuner.Objective("score", "max"), max_trials=16, hyperparameters=space(), seed=0
        )
        made._set_project_dir(str(tmp_path), name)
        return made

    serial = []
    for kind, name in ((keras_tuner.oracles.GridSearchOracle, "grid"), (oracles.GridOracle, "ours")):
        one = oracle(kind, name)
        values = []
        while (trial := one.create_trial("w1")).status == "RUNNING":
            values.append(trial.hyperparameters.values)
            trial.status = "COMPLETED"
            one.update_trial(trial.trial_id, {"score": 0.5})
            one.end_trial(trial)
        serial.append(values)
    assert serial[0] == serial[1] and len(serial[1]) == 16
    # Three workers ask at once: KerasTuner's grid makes the third wait, ours does not.
    theirs, ours = (
        oracle(keras_tuner.oracles.GridSearchOracle, "grid3"),
        oracle(oracles.GridOracle, "ours3"),
    )
    assert [theirs.create_trial(w).status for w in ("a", "b", "c")] == ["RUNNING", "RUNNING", "IDLE"]
    given = [ours.create_trial(w) for w in ("a", "b", "c")]
    assert [t.hyperparameters.values for t in given] == serial[1][:3]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--chief"], "--oracle HOST:PORT"),
        (["--worker", "w1"], "--oracle HOST:PORT"),
        (["--oracle", "127.0.0.1:8000"], "--chief, or --worker ID"),
        (["--chief", "--worker", "w1", "--oracle", "127.0.0.1:8000"], "exclude each other"),
        (["--worker", "chief2", "--oracle", "127.0.0.1:8000"], "'chief'"),
        (["--worker", "w1", "--oracle", "nohostport"], "HOST:PORT"),
        (["--worker", "w1", "--oracle", "127.0.0.1:8000", "--fresh"], "--fresh"),
    ],
)
def test_bad_role_arguments_exit_with_one_sentence(args, words):
    result = subprocess.run(
        cli(STUDY, "--budget", "smoke", *args), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_chief_on_a_busy_port_says_so():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            cli(STUDY, "--budget", "smoke", "--chief", "--oracle", f"127.0.0.1:{port}"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
