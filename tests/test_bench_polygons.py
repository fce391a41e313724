"""bench.polygons' report: app.predict's --profile line is read back, and the verdict on the
scene target says met or not met, and when other work shared the machine, that it did."""

from __future__ import annotations

from app.pipeline import Profile
from bench import polygons, polygons_report


def row(side=4096, seconds=(8.0, 7.5, 9.0), forward=(7.4, 7.2, 8.0), other=0.0, window=None) -> dict:
    profile = {"load": 0.4, "network": 6.9, "total": 7.9}
    return {
        "side": side,
        "window": window,
        "runtime": "tflite",
        "seconds": list(seconds),
        "cpu_seconds": [12.0] * len(seconds),
        "peak_gib": [0.6] * len(seconds),
        "profiles": [profile] * len(seconds),
        "forward_seconds": list(forward),
        "forward_cpu_seconds": [11.0] * len(forward),
        "forward_runtime": "tflite",
        "other_cores": other,
        "parts": 1,
        "predicted_outlines": 150,
        "truth_seconds": 0.7,
        "truth_peak_gib": 1.0,
        "truth_resident_gib_before": 0.8,
        "truth_count": 81,
        "truth_iou": 0.995,
        "truth_total_area_m2": 11906.0,
        "truth_area_crs": "EPSG:3857",
    }


HEADER = {
    "command": "python -m bench.polygons",
    "machine": "AMD EPYC, 2 logical cores",
    "date": "today",
    "other_work": "Other work ...",
    "scene": "somewhere",
    "model": "`model.keras`",
}


def test_the_profile_line_is_read_back():
    line = Profile(load=0.5, network=6.25, tail=0.125).line(7.5)
    parsed = polygons._profile(f"noise\n{line}\nmore noise")
    assert parsed["load"] == 0.5 and parsed["network"] == 6.25 and parsed["tail"] == 0.12
    assert parsed["total"] == 7.5 and set(polygons_report.PROFILE_PARTS) <= set(parsed)
    assert polygons.THROUGH.search("... (2.10 MP/s through tflite) -> x")["runtime"] == "tflite"


def test_the_verdict_says_met_only_at_the_target_and_names_other_work():
    met = polygons_report.report(HEADER, [row()])
    assert "(met: 2.10 MP/s) and within 1.1x of the in-process forward (met: 1.08x its wall time" in met
    assert "1.09x its CPU time): **met**." in met
    slow = polygons_report.report(HEADER, [row(seconds=(20.0,), forward=(10.0,), other=1.3)])
    assert "(not met: 0.84 MP/s)" in slow and "(not met: 2.00x its wall time, 1.09x its CPU time)" in slow
    assert "**not met**. Other work took 1.30 of the 2 cores" in slow
    end_to_end, forward = (
        "| 4096 | tflite | 20.0 [20.0-20.0] | 0.84 | 12.0 | 0.60 |",
        "10.0 [10.0-10.0] | 1.68 |",
    )
    assert f"{end_to_end} {forward} 11.0 | 2.00 (1.09) |" in slow


def test_parts_rows_have_their_own_table():
    text = polygons_report.report(HEADER, [row(), {**row(window=2048), "parts": 9}])
    assert "## The largest scene in parts" in text and "| 4096 | 2048 | 9 | tflite |" in text
    assert "| 4096 | 2048 | 0.00 | 0.40 |" in text  # its profile row: start, load
