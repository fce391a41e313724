"""bench.speed's page: OUT/bench.md from one run's measurements (OUT/bench.json beside it)."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from bench.runtimes_report import section_of
from zoo.files import write_json_atomic, write_text_atomic


def write_report(out: Path, results: dict) -> None:
    t, f, h = results["training"], results["forward"], results["http"]
    speedup = t["ours_decoder_images_per_s"] / t["tutorial_images_per_s"]
    lines = [
        "# Benchmark",
        "",
        f"`{results['command']}` on {results['machine']}, {results['date']}; {results['versions']}.",
        f"Data: {results['data']} ({results['images']} tiles, 256x256). Model: `{results['model']}`.",
        "Medians unless marked; every number below comes from this one run. Load average "
        f"(1 min) at start {results['load_start']:.1f}, at end {results['load_end']:.1f}. "
        f"{results.get('other_work', '')}",
        "",
        "## Training throughput",
        "",
        tabulate(
            [
                [
                    "standard recipe: decoder on cached features (bce_dice, AdamW)",
                    f"{t['ours_decoder_images_per_s']:.1f}",
                    f"{t['ours_trainable_params'] / 1e6:.2f} M",
                ],
                [
                    "tutorial recipe: full model end to end (512/256/128/64 transpose decoder, Adam, BCE)",
                    f"{t['tutorial_images_per_s']:.1f}",
                    f"{t['tutorial_trainable_params'] / 1e6:.2f} M",
                ],
            ],
            headers=["recipe", "images/s", "trainable params"],
            tablefmt="github",
        ),
        "",
        f"Speed-up of a training step: **{speedup:.1f}x**. The cache is paid once per study: "
        f"{t['encode_ms_per_image']:.1f} ms per tile and copy to encode, "
        f"{t['cache_bytes_per_image'] / 2**20:.2f} MiB per tile and copy (float16).",
        "",
        "## Levers on the decoder's training step",
        "",
        "Same cached features, same decoder, batch 16; images/s after one warm-up epoch.",
        "",
        tabulate(
            [
                [name, f"{value:.1f}" if isinstance(value, float) else value]
                for name, value in t["levers_images_per_s"].items()
            ],
            headers=["variant of the step", "images/s"],
            tablefmt="github",
        ),
        "",
        "## Forward cost (batch of 16, per image)",
        "",
        tabulate(
            [
                ["encoder (frozen MobileNetV2)", f"{f['encoder_ms_per_image']:.1f}"],
                ["decoder", f"{f['decoder_ms_per_image']:.1f}"],
                ["full model", f"{f['full_ms_per_image']:.1f}"],
            ],
            headers=["part", "ms per 256x256 image"],
            tablefmt="github",
        ),
        "",
        "## /inference end to end against the raw forward",
        "",
        tabulate(
            [
                [
                    f"{size}x{size}",
                    f"{h[size]['body_mb']:.1f}",
                    f"{h[size]['http_p50_ms']:.0f}",
                    f"{h[size]['http_p95_ms']:.0f}",
                    f"{h[size]['raw_p50_ms']:.0f}",
                    f"{h[size]['raw_p95_ms']:.0f}",
                    f"{h[size]['ratio_p50']:.2f}",
                ]
                for size in ("256", "1024")
            ],
            headers=[
                "image",
                "JSON body MB",
                "HTTP p50 ms",
                "HTTP p95 ms",
                "raw p50 ms",
                "raw p95 ms",
                "HTTP / raw (p50)",
            ],
            tablefmt="github",
        ),
        "",
        f"Raw = `zoo.predict.Segmenter.predict` in process (padding, forward, threshold) through "
        f"{h.get('runtime', 'keras')}, the runtime the server chose (`--runtime auto`). "
        f"{results['requests']} requests per size, one client.",
        "",
        "## Every variant: parameters and forward latency",
        "",
        "One 256x256 image through the full model (encoder included) with `zoo.predict.Segmenter`, "
        "median of 15 after one warm-up; random decoder weights (latency does not depend on them).",
        "",
        tabulate(
            [
                {
                    **r,
                    "trainable params": f"{r['trainable params'] / 1e6:.2f} M",
                    "ms per 256x256 image (median)": f"{r['ms per 256x256 image (median)']:.1f}",
                }
                for r in results["variants"]
            ],
            headers="keys",
            tablefmt="github",
        ),
        "",
        "## Peak memory",
        "",
        f"- benchmark process (training both recipes): {results['bench_peak_rss_mb']:.0f} MiB",
        f"- server process: {h['server_peak_rss_mb']:.0f} MiB",
        "",
    ]
    lines += [
        "## How cost grows",
        "",
        "Measured point by point by `python -m bench.scaling`: see [scaling.md](scaling.md).",
        "",
    ]
    # The serving-runtimes section is written by its own command: keep it, do not erase it.
    previous = (out / "bench.md").read_text() if (out / "bench.md").is_file() else ""
    write_text_atomic(out / "bench.md", "\n".join(lines + [section_of(previous)]).rstrip("\n") + "\n")
    write_json_atomic(out / "bench.json", results)
