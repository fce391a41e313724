"""The "Serving runtimes" sections of results/bench.md that `python -m bench.runtimes` writes
(one for the model's own test-time views, one per `--tta` override), how one replaces its old
self in place, and the run's JSON file beside it."""

from __future__ import annotations

import re
from pathlib import Path

from training.heldout import option_name
from zoo.files import write_json_atomic, write_text_atomic
from zoo.predict import TTA_VIEWS
from zoo.runtimes import RUNTIMES

SECTION = "## Serving runtimes"


def section_title(run: dict) -> str:
    """ "## Serving runtimes" for the model's own settings; with --tta V, its own section, named
    by the views and, where the model's scales are not 1 alone, the scales ("transpose@1+0.5"):
    a model served at other scales never overwrites another's measurement."""
    override = run.get("tta_override")
    return SECTION if not override else f"{SECTION}, --tta {override_label(run)}"


def override_label(run: dict) -> str:
    return option_name(run["tta_override"], run.get("scales", (1.0,)))


def section(run: dict) -> str:
    rows = []
    for runtime, r in run["runtimes"].items():
        c = r["clients"]
        rows.append(
            f"| {runtime} | {_cell(r['256'])} | {_cell(r['1024'])} | {c['requests_per_s']:.1f} "
            f"| {c['p50_ms']:.0f} / {c['p95_ms']:.0f} | {r['differ_from_keras'].get('256', '-')} / "
            f"{r['differ_from_keras'].get('1024', '-')} | {r['server_peak_rss_mb']:.0f} "
            f"| {r['start_s']:.1f} |"
        )
    default, images = run["default"], _images_a_request(run)
    return "\n".join(
        [
            section_title(run),
            "",
            f"`{run['command']}` on {run['machine']}, {run['date']}, CPU only. Model: {run['model']} "
            f"(threshold {run['threshold']:g}, scales {', '.join(f'{s:g}' for s in run['scales'])}, "
            f"test-time views `{run.get('tta', 'none')}`: {images} "
            f"image{'' if images == 1 else 's'} through the "
            "network a request). Each runtime is its own `python -m app "
            "--runtime R` process on a free loopback port, all running at once and taking turns, "
            "request by request (burst by burst for the clients), so they meet the same load; JSON "
            "bodies (`bench.clients`); latency is at the client, from sending to the whole "
            "answer read.",
            "",
            f"Single requests: {run['requests']} at 256 x 256 and {run['requests_1024']} at 1024 x 1024, "
            f"one after another after two warm-ups; p50 [p25-p75] / p95 ms, and in brackets the server's "
            "CPU time per request (user + system over all its threads: other work on the machine "
            "inflates it far less than the wall time; on an idle machine a request takes roughly "
            "between half "
            f"of it, both cores busy, and all of it). Throughput: {run['rounds']} bursts of {run['clients']} "
            f"clients x {run['per_client']} requests of 256 x 256 at once, answers checked byte for byte "
            "against each server's serial answer. Masks: pixels of the 256 and 1024 answers that differ "
            "from the Keras runtime's (the parity test, tests/test_export.py, checks real tiles).",
            "",
            "| runtime | 256 px: p50 [IQR] / p95 ms (CPU ms) | 1024 px: p50 [IQR] / p95 ms (CPU ms) "
            f"| {run['clients']} clients: requests/s | {run['clients']} clients: p50 / p95 ms "
            "| mask pixels differing from keras (256 / 1024) | server peak RSS MiB | start s |",
            "|---|---|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Default (`python -m app`, `--runtime auto`): **{default}**, the fastest at 256 px "
            f"({_judged(run)}) whose masks match. Target p50 <= 25 ms for a single 256 px request: "
            f"{'met' if run['runtimes'][default]['256']['p50_ms'] <= 25 else 'not met'} "
            f"({run['runtimes'][default]['256']['p50_ms']:.1f} ms)."
            + (
                ""
                if default == RUNTIMES[0]
                else f" **zoo.runtimes.RUNTIMES lists {RUNTIMES[0]} first, "
                f"not {default}: its order is what `auto` serves.**"
            )
            + f" {run['load_note']}",
            "",
        ]
    )


def _judged(run: dict) -> str:
    if run.get("default_by") == "server_cpu_ms":
        return "by the server's CPU time per request: other work shared the machine and inflates p50 unevenly"
    return "by p50"


def _images_a_request(run: dict) -> int:
    return len(run["scales"]) * len(TTA_VIEWS[run.get("tta", "none")])


def _cell(r: dict) -> str:
    return (
        f"{r['p50_ms']:.0f} [{r['iqr_ms'][0]:.0f}-{r['iqr_ms'][1]:.0f}] / {r['p95_ms']:.0f} "
        f"({r['server_cpu_ms']:.0f})"
    )


def replace_section(text: str, new: str) -> str:
    """`text` with the section titled as `new`'s first line (up to the next `## ` heading)
    replaced by `new`, or `new` appended."""
    pattern = re.compile(rf"^{re.escape(new.splitlines()[0])}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: new.rstrip("\n") + "\n\n", text, count=1).rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" + new


def section_of(text: str) -> str:
    """The "Serving runtimes" sections of a bench.md (each `--tta` override's too), or "" (for
    `bench.speed` to keep)."""
    found = re.findall(rf"^{re.escape(SECTION)}(?:, --tta \S+)?\n.*?(?=^## |\Z)", text, re.S | re.M)
    return "".join(found)


def write_run(out: Path, run: dict) -> None:
    """The run's section of OUT/bench.md (the rest of the file kept) and its JSON file."""
    bench_md = out / "bench.md"
    existing = bench_md.read_text() if bench_md.is_file() else "# Benchmark\n"
    write_text_atomic(bench_md, replace_section(existing, section(run)))
    suffix = "" if run["tta_override"] is None else f"_tta-{override_label(run)}"
    write_json_atomic(out / f"bench_runtimes{suffix}.json", run)
