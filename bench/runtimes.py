"""`python -m bench.runtimes [--model PATH | --stand-in METADATA_JSON] [--runtimes ...] [--tta V]`

The served model through each runtime (`python -m app --runtime R`), end to end over loopback
HTTP with JSON bodies: single requests of 256 x 256 and 1024 x 1024 pixels (one client, p50,
p95 and the interquartile range, and the server's CPU time per request), and throughput with
`--clients` clients at 256 px. One server per runtime runs for the whole benchmark and the
runtimes take turns request by request (burst by burst for the clients), so on a machine
shared with other work every runtime meets the same load and the comparison stays fair. Every
answer must equal that server's own serial answer byte for byte, and each runtime's masks are
compared with the Keras runtime's, pixel by pixel. The section "Serving runtimes" of
OUT/bench.md is replaced (the rest of the file is left as `bench.speed` wrote it),
and OUT/bench_runtimes.json holds every number. With `--tta V` the servers apply the test-time
views V instead of the model's (`python -m app --tta V`), and the run has its own section,
"Serving runtimes, --tta V", and its own OUT/bench_runtimes_tta-V.json (V@1+0.5 where the model
serves scales 1 and 0.5).

`--stand-in` benchmarks a stand-in instead of a trained model: the architecture and inference
settings given as model metadata (JSON: "config", "inference"), on the real ImageNet encoder,
with a seeded random decoder. Its latency is the trained model's (no operation depends on the
weights' values); its masks are not.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import psutil
import requests

from bench import clients, server
from bench.runtimes_report import section, write_run
from training.machine import OTHER_WORK_NOTICED, OtherWork, describe
from zoo.predict import TTA_CHOICES, TTA_FROM_MODEL, options_from
from zoo.runtimes import RUNTIMES
from zoo.served import resolve_model_path

# Masks "match" when at most this fraction of pixels differ from the Keras runtime's: on random
# images a few pixels sit within 1e-4 of the threshold (tests/test_export.py bounds them exactly).
MATCH_FRACTION = 1e-4


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which runtimes, how many requests of each kind, and which test-time views (the flags)."""

    runtimes: tuple[str, ...] = tuple(RUNTIMES)
    requests: int = 40  # single requests at 256 px
    requests_1024: int = 8  # single requests at 1024 px
    clients: int = 8
    per_client: int = 3  # requests per client and round at 256 px
    rounds: int = 2  # rounds of the clients' phase
    tta: str = TTA_FROM_MODEL  # test-time views the servers apply


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.runtimes", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--model",
        type=Path,
        help="a .keras file exported by `python -m zoo.export` "
        "(default: the served model, as `python -m app` resolves it)",
    )
    parser.add_argument(
        "--stand-in",
        help='model metadata as JSON, e.g. \'{"config": {"upsampler": '
        '"nearest", "skip": "attention"}, "inference": {"threshold": 0.6, '
        '"scales": [1, 0.5, 0.25]}}\': build, export and benchmark a stand-in instead',
    )
    parser.add_argument("--runtimes", default=",".join(Plan.runtimes))
    parser.add_argument("--requests", type=int, default=Plan.requests, help="single requests at 256 px")
    parser.add_argument(
        "--requests-1024", type=int, default=Plan.requests_1024, help="single requests at 1024 px"
    )
    parser.add_argument("--clients", type=int, default=Plan.clients)
    parser.add_argument(
        "--per-client", type=int, default=Plan.per_client, help="requests per client and round at 256 px"
    )
    parser.add_argument("--rounds", type=int, default=Plan.rounds, help="rounds of the clients' phase")
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=Plan.tta,
        help="test-time views the servers apply (default: the model's)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    args.runtimes = tuple(name.strip() for name in args.runtimes.split(",") if name.strip())
    unknown = sorted(set(args.runtimes) - set(RUNTIMES))
    if unknown or not args.runtimes:
        parser.error(
            f"--runtimes: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(RUNTIMES)}"
        )
    return args


def build_stand_in(metadata: dict, folder: Path) -> Path:
    """The architecture of `metadata["config"]` on the ImageNet encoder, saved and exported."""
    import keras  # deferred: TensorFlow loads only for a stand-in; the servers are children

    from zoo import export, runtimes, saving, unet
    from zoo.config import DecoderConfig

    keras.utils.set_random_seed(0)
    config = DecoderConfig.from_dict(metadata["config"])
    path = saving.save(
        unet.build(config),
        folder / "model.keras",
        {**metadata, "config": config.to_dict(), "data": {"name": "stand-in: random decoder"}},
    )
    export.export(export.ExportRequest(path, runtimes.export_dir(path)))
    return path


def spread_ms(seconds) -> dict:
    ms = np.asarray(seconds) * 1000
    p25, p50, p75, p95 = np.percentile(ms, [25, 50, 75, 95])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "iqr_ms": [float(p25), float(p75)],
        "min_ms": float(ms.min()),
        "n": int(ms.size),
    }


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def interleaved_singles(servers: dict, body: bytes, count: int) -> tuple[dict, dict]:
    """`count` single requests to each server, taking turns (the order rotates every round),
    after two warm-ups each: every runtime sees the same moments of whatever else the machine
    is doing. Per runtime: latency spread and the server's CPU time per request (user + system,
    all its threads: what other work inflates least); and the last mask."""
    sessions = {runtime: requests.Session() for runtime in servers}

    def post(runtime):
        answer = sessions[runtime].post(
            f"{servers[runtime].url}/inference", data=body, headers=clients.JSON_HEADERS, timeout=600
        )
        answer.raise_for_status()
        return answer

    for runtime in servers:
        for _ in range(2):
            post(runtime)
    order, times = list(servers), {runtime: [] for runtime in servers}
    cpu = {runtime: cpu_seconds(running.process.pid) for runtime, running in servers.items()}
    answers = {}
    for turn in range(count):
        for runtime in order[turn % len(order) :] + order[: turn % len(order)]:
            began = time.perf_counter()
            answers[runtime] = post(runtime)
            times[runtime].append(time.perf_counter() - began)
    stats = {
        runtime: {
            **spread_ms(times[runtime]),
            "server_cpu_ms": 1000 * (cpu_seconds(servers[runtime].process.pid) - cpu[runtime]) / count,
        }
        for runtime in servers
    }
    for session in sessions.values():
        session.close()
    masks = {
        runtime: np.asarray(orjson.loads(answer.content)["prediction"], np.uint8)
        for runtime, answer in answers.items()
    }
    return stats, masks


def interleaved_clients(servers: dict, bodies: list[bytes], per_client: int, rounds: int) -> dict:
    """`len(bodies)` clients at once against each server in turn, `rounds` times (order
    rotating), each client sending `per_client` requests a round; answers checked byte for byte
    against each server's serial answers."""
    order = list(servers)
    answers = {
        runtime: clients.reference_answers(running.url, bodies, 256, 600)
        for runtime, running in servers.items()
    }
    latencies, walls, errors = (
        {runtime: [] for runtime in servers},
        dict.fromkeys(servers, 0.0),
        dict.fromkeys(servers, 0),
    )
    for turn in range(rounds):
        for runtime in order[turn % len(order) :] + order[: turn % len(order)]:
            tally, wall = clients.run_clients(
                servers[runtime].url, bodies, answers[runtime], [per_client] * len(bodies), 600
            )
            latencies[runtime] += tally.latencies
            walls[runtime] += wall
            errors[runtime] += tally.error_count
    return {
        runtime: {
            **spread_ms(latencies[runtime]),
            "errors": errors[runtime],
            "requests_per_s": len(latencies[runtime]) / walls[runtime],
            "clients": len(bodies),
        }
        for runtime in servers
    }


def bench_runtimes(model: Path, bodies: dict, plan: Plan) -> tuple[dict, dict, str]:
    """Every runtime's server started at once, then each phase interleaved across them."""
    names = plan.runtimes
    results, masks = {name: {} for name in names}, {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in names:
            began = time.perf_counter()
            servers[name] = start_server(stack, model, name, plan.tta)
            results[name]["start_s"] = time.perf_counter() - began
        load_start, other_work = os.getloadavg()[0], OtherWork()
        for size, count in ((256, plan.requests), (1024, plan.requests_1024)):
            print(f"single {size} px requests ...", flush=True)
            stats, masks[size] = interleaved_singles(servers, bodies[size], count)
            for name in names:
                results[name][str(size)] = stats[name]
        print(f"{plan.clients} clients ...", flush=True)
        together = interleaved_clients(servers, bodies["clients"], plan.per_client, plan.rounds)
        for name in names:
            results[name].update(
                clients=together[name],
                load_start=load_start,
                load_end=os.getloadavg()[0],
                server_peak_rss_mb=_peak_rss_mb(servers[name].process.pid),
            )
        other_note = other_work.note()  # before the servers stop: their time is the run's own
        other_cores = other_work.cores()
    by_runtime = {name: {size: masks[size][name] for size in masks} for name in names}
    return results, by_runtime, other_note, other_cores


def start_server(stack: contextlib.ExitStack, model: Path, runtime: str, tta: str) -> server.Server:
    """`python -m app --runtime RUNTIME --tta TTA` on `model`, kept running until `stack`
    closes; refused unless it says it serves that runtime and those views."""
    log_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / f"{runtime}.log"
    running = stack.enter_context(
        server.running_server(
            ["--model", str(model), "--runtime", runtime, "--tta", tta],
            log_path=log_path,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            timeout=300,
        )
    )
    served = requests.get(f"{running.url}/model", timeout=30).json().get("serving", {})
    if served.get("runtime") != runtime:
        raise RuntimeError(f"asked for {runtime}, the server runs {served.get('runtime')}")
    if tta != TTA_FROM_MODEL and served.get("tta") != tta:
        raise RuntimeError(f"asked for test-time views {tta}, the server applies {served.get('tta')}")
    return running


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))


def compare_masks(masks: dict, reference: dict) -> dict:
    return {str(size): int((masks[size] != reference[size]).sum()) for size in reference}


def model_to_bench(explicit: Path | None, stand_in: str | None, scratch: Path) -> tuple[Path, str]:
    """The model file (a stand-in built into `scratch` when `stand_in` is given) and how the
    report names it."""
    if stand_in:
        model = build_stand_in(json.loads(stand_in), scratch)
        return model, (
            f"stand-in `{model.stem}` of the served architecture "
            f"({json.dumps(json.loads(stand_in)['config'])}, ImageNet encoder, "
            "seeded random decoder)"
        )
    model = resolve_model_path(explicit)
    return model, f"`{model}`"


def request_bodies(client_count: int) -> dict:
    """Seeded random JSON bodies: one of 256 px, one of 1024 px, one per client of 256 px."""
    rng = np.random.default_rng(0)
    image = lambda side: rng.integers(0, 256, (side, side, 3), dtype=np.uint8)  # noqa: E731
    as_body = lambda pixels: orjson.dumps({"image": pixels}, option=orjson.OPT_SERIALIZE_NUMPY)  # noqa: E731
    return {
        256: as_body(image(256)),
        1024: as_body(image(1024)),
        "clients": clients.client_bodies(client_count, 256, seed=1),
    }


def judged_by(other_cores: float) -> str:
    """What "fastest" is judged by: the p50 latency on an otherwise idle machine; the server's CPU
    time per request when other work shared it, which inflates latencies unevenly (2026-12-06,
    1.3 cores of other work: LiteRT 25 ms of CPU a request against ONNX Runtime's 26, yet a p50
    of 34 ms against 33)."""
    return "server_cpu_ms" if other_cores > OTHER_WORK_NOTICED else "p50_ms"


def fastest_matching(results: dict, masks: dict, by: str = "p50_ms") -> str:
    """Marks each runtime's pixels differing from Keras; the fastest runtime at 256 px (`by`:
    "p50_ms" or "server_cpu_ms") whose masks match (what `--runtime auto` should serve)."""
    for runtime in results:
        results[runtime]["differ_from_keras"] = (
            compare_masks(masks[runtime], masks["keras"]) if "keras" in masks else {}
        )
    matching = [
        r
        for r in results
        if all(
            count <= MATCH_FRACTION * int(size) ** 2
            for size, count in results[r]["differ_from_keras"].items()
        )
    ]
    return min(matching, key=lambda r: results[r]["256"][by])


def record(
    plan: Plan,
    results: dict,
    default: str,
    other_note: str,
    metadata: dict,
    described: str,
    command: str,
    by: str = "p50_ms",
) -> dict:
    """Everything the section and the JSON file say about one run."""
    loads = [v for r in results.values() for v in (r["load_start"], r["load_end"])]
    served = options_from(metadata)  # what the server applies: threshold, scales, views
    if plan.tta != TTA_FROM_MODEL:
        served["tta"] = plan.tta
    return {
        "command": command,
        "machine": describe(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": described,
        "threshold": served["threshold"],
        "scales": list(served["scales"]),
        "tta": served["tta"],
        "tta_override": None if plan.tta == TTA_FROM_MODEL else plan.tta,
        "requests": plan.requests,
        "requests_1024": plan.requests_1024,
        "clients": plan.clients,
        "per_client": plan.per_client,
        "rounds": plan.rounds,
        "runtimes": results,
        "default": default,
        "default_by": by,
        "load_note": f"{other_note} Load average (1 min), the benchmark's own work included: "
        f"{min(loads):.1f} to {max(loads):.1f}.",
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    plan = Plan(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Plan)})
    with tempfile.TemporaryDirectory() as scratch:
        model, described = model_to_bench(args.model, args.stand_in, Path(scratch))
        if not model.is_file():
            print(f"error: no model at {model}; pass --model or --stand-in", file=sys.stderr)
            return 2
        metadata = json.loads(model.with_suffix(".json").read_text())
        results, masks, other_note, other_cores = bench_runtimes(model, request_bodies(plan.clients), plan)
    by = judged_by(other_cores)
    default = fastest_matching(results, masks, by)
    command = "python -m bench.runtimes " + " ".join(argv)
    run = record(plan, results, default, other_note, metadata, described, command, by)
    write_run(args.out, run)
    print(section(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
