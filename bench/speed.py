"""python -m bench.speed [--data DIR] [--model PATH] [--out results] [--images N]

Measures, in one run on one machine, and writes OUT/bench.md + OUT/bench.json:
- training throughput (images/s) of the standard recipe (decoder on cached encoder
  features) against the TensorFlow tutorial recipe (full model end to end, Adam, BCE);
- encoder forward cost against decoder forward cost;
- POST /inference end to end at 256x256 and 1024x1024 (p50, p95) against the raw forward
  of the same model, so the HTTP + JSON overhead reads as a ratio;
- peak memory of the benchmark process and of the server.
The server is started as a subprocess (`python -m app`) and called over loopback HTTP.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402

from ablations import studies  # noqa: E402
from bench.server import running_server  # noqa: E402
from bench.speed_report import write_report  # noqa: E402
from data import folders, splits, synthetic  # noqa: E402
from training.machine import OtherWork, describe, median_ms, process_memory_gib  # noqa: E402
from zoo.config import SKIP_MERGES, UPSAMPLERS, DecoderConfig  # noqa: E402
from zoo.predict import Segmenter  # noqa: E402
from zoo.served import served_model_path  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, help="images/ + masks/ folder (default: SYNTHETIC)")
    parser.add_argument(
        "--model",
        type=Path,
        default=served_model_path(),
        help="default: the served model (results/MODEL, else results/final/model.keras)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--images", type=int, default=64, help="training images per measurement")
    parser.add_argument("--requests", type=int, default=30, help="requests per /inference size")
    return parser.parse_args(argv)


def training_images_per_second(model, inputs, targets, batch_size: int, epochs: int = 2) -> float:
    """Images/s of model.fit after one warm-up epoch (tracing excluded)."""
    model.fit(inputs, targets, batch_size=batch_size, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(inputs, targets, batch_size=batch_size, epochs=epochs, verbose=0)
    return epochs * len(targets) / (time.perf_counter() - started)


def bench_training(images, masks, config, encoder) -> dict:
    import keras  # deferred: TensorFlow loads when a measurement starts, not for --help

    from training import features
    from zoo import unet
    from zoo.losses import SegmentationLoss

    ours = unet.build(config, encoder=encoder)
    started = time.perf_counter()
    cached = features.encode(
        ours, images, masks, copies=1, augmentation="none", seed=0, progress=lambda *_: None
    )
    encode_per_image = (time.perf_counter() - started) / len(images)
    decoder = unet.decoder_of(ours)
    decoder.compile(keras.optimizers.AdamW(1e-3), SegmentationLoss("bce_dice"))
    inputs, targets = cached.batch(np.zeros(len(images), int), np.arange(len(images)))
    ours_ips = training_images_per_second(decoder, inputs, targets, 16)

    levers = bench_levers(config, encoder, inputs, targets)

    tutorial = unet.build_tutorial()
    tutorial.compile(keras.optimizers.Adam(1e-3), SegmentationLoss("bce"))
    tutorial_ips = training_images_per_second(
        tutorial, images.astype(np.float32), masks[..., None].astype(np.float32), 16
    )
    return {
        "ours_decoder_images_per_s": ours_ips,
        "encode_ms_per_image": encode_per_image * 1000,
        "tutorial_images_per_s": tutorial_ips,
        "cache_bytes_per_image": cached.nbytes() / len(images),
        "levers_images_per_s": levers,
        "ours_trainable_params": unet.trainable_params(ours),
        "tutorial_trainable_params": unet.trainable_params(tutorial),
    }


def bench_levers(config, encoder, inputs, targets) -> dict:
    """Decoder training images/s with XLA, and with bfloat16 compute (this CPU has
    AVX512-BF16), each against the default, on the same cached features.

    A lever TensorFlow cannot run (an `OpError` while compiling or executing, e.g. XLA's CPU
    backend refusing mixed precisions) is a result, reported as "fails: ..."; any other
    exception is a bug here and propagates."""
    import keras  # deferred: TensorFlow loads when a measurement starts, not for --help
    import tensorflow as tf

    from zoo import unet
    from zoo.losses import SegmentationLoss

    def throughput(jit_compile: bool, policy: str) -> float | str:
        previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(policy)
        try:
            decoder = unet.decoder_of(unet.build(config, encoder=encoder))
            decoder.compile(
                keras.optimizers.AdamW(1e-3), SegmentationLoss("bce_dice"), jit_compile=jit_compile
            )
            return training_images_per_second(decoder, inputs, targets, 16)
        except tf.errors.OpError as error:  # a lever TensorFlow cannot run is a result, not a crash
            return f"fails: {type(error).__name__}: {_cause(error)}"
        finally:
            keras.mixed_precision.set_global_policy(previous)

    return {
        "default (float32, no XLA)": throughput(False, "float32"),
        "XLA (jit_compile=True)": throughput(True, "float32"),
        "bfloat16 (mixed_bfloat16)": throughput(False, "mixed_bfloat16"),
        "XLA + bfloat16": throughput(True, "mixed_bfloat16"),
    }


def _cause(error: Exception) -> str:
    """The informative line of an error: TensorFlow's start with 'Graph execution error:'."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "INTERNAL" in line or "disallowed" in line]
    return (telling or lines or [""])[0][:200].replace("|", "/")


def bench_forward(model, images) -> dict:
    import tensorflow as tf  # deferred: TensorFlow loads when a measurement starts, not for --help

    from zoo import unet

    batch = tf.constant(images[:16].astype(np.float32))
    encode = tf.function(lambda x: unet.encoder_features(model, x))
    taps = encode(batch)
    decode = tf.function(lambda t: unet.decoder_of(model)(t, training=False))
    decode(taps)
    full = tf.function(lambda x: model(x, training=False))
    full(batch)

    def per_image(fn, arg) -> float:
        return median_ms(lambda: [t.numpy() for t in tf.nest.flatten(fn(arg))], 5)[0] / 16

    return {
        "encoder_ms_per_image": per_image(encode, batch),
        "decoder_ms_per_image": per_image(decode, taps),
        "full_ms_per_image": per_image(full, batch),
    }


def bench_variants(encoder, repeats: int = 15) -> list[dict]:
    """Trainable parameters and median forward latency of every decoder_variants variant."""
    from training.train import latency_ms  # deferred: it loads TensorFlow
    from zoo import unet

    rows = []
    for upsampler, skip in itertools.product(UPSAMPLERS, SKIP_MERGES):
        config = dataclasses.replace(studies.DEFAULT_DECODER, upsampler=upsampler, skip=skip)
        model = unet.build(config, encoder=encoder)
        rows.append(
            {
                "variant": config.name,
                "trainable params": unet.trainable_params(model),
                "ms per 256x256 image (median)": latency_ms(model, 256, repeats),
            }
        )
    tutorial = unet.build_tutorial()
    rows.append(
        {
            "variant": "TF tutorial decoder (512/256/128/64)",
            "trainable params": unet.trainable_params(tutorial),
            "ms per 256x256 image (median)": latency_ms(tutorial, 256, repeats),
        }
    )
    return rows


def bench_http(model_path: Path, requests_per_size: int) -> dict:
    """POST /inference at 256 and 1024 px against the same model's raw forward through the
    runtime the server chose (`--runtime auto`: the fastest exported), and the server's peak
    memory."""
    from app.model import load_segmenter  # deferred: loading a runtime may load TensorFlow

    # The raw side below applies the model's own views, so the server must too, whatever $ZOO_TTA says.
    with running_server(["--model", str(model_path), "--tta", "model"]) as server:
        runtime = requests.get(f"{server.url}/model", timeout=30).json().get("serving", {}).get("runtime")
        segmenter = load_segmenter(model_path, runtime or "keras")
        rng = np.random.default_rng(0)
        result = {
            str(size): _http_against_raw(
                server.url,
                segmenter,
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                requests_per_size,
            )
            for size in (256, 1024)
        }
        result["server_peak_rss_mb"] = _peak_rss_mb(psutil.Process(server.process.pid))
        result["runtime"] = runtime or "keras"
        return result


def _http_against_raw(url: str, segmenter: Segmenter, image: np.ndarray, count: int) -> dict:
    body = json.dumps({"image": image.tolist()})

    def post() -> None:
        requests.post(
            url + "/inference", data=body, headers={"Content-Type": "application/json"}, timeout=300
        ).raise_for_status()

    post()
    segmenter.predict(image)
    http_p50, http_p95 = median_ms(post, count)
    raw_p50, raw_p95 = median_ms(lambda: segmenter.predict(image), count)
    return {
        "http_p50_ms": http_p50,
        "http_p95_ms": http_p95,
        "raw_p50_ms": raw_p50,
        "raw_p95_ms": raw_p95,
        "ratio_p50": http_p50 / raw_p50,
        "body_mb": len(body) / 2**20,
    }


def _peak_rss_mb(process) -> float:
    try:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return process.memory_info().rss / 2**20


def load_images(data: Path | None, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`count` 256 px tiles of `data` (SYNTHETIC scenes when None), their masks, their source."""
    root = data or synthetic.default_synthetic_root(count, 256, 0)
    samples = splits.limit(folders.scan_folder(root, check=False), count, seed=0)
    images, masks = folders.load_arrays(samples, 256)
    return images, masks, ("SYNTHETIC scenes" if data is None else str(data))


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.model.is_file():
        print(
            f"error: no model at {args.model}; make one with `python -m training.fit` or pass --model",
            file=sys.stderr,
        )
        return 2
    load_start, other = os.getloadavg()[0], OtherWork()
    images, masks, source = load_images(args.data, args.images)
    config = DecoderConfig.from_dict(json.loads(args.model.with_suffix(".json").read_text())["config"])
    results = {
        "command": "python -m bench.speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": describe(),
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "data": source,
        "images": len(images),
        "model": str(args.model),
        "config": config.name,
        "requests": args.requests,
        **measure(images, masks, config, args.model, args.requests),
        "bench_peak_rss_mb": process_memory_gib()[1] * 1024,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "other_work": other.note(),
    }
    write_report(args.out, results)
    print((args.out / "bench.md").read_text())
    return 0


def measure(images, masks, config: DecoderConfig, model_path: Path, requests_per_size: int) -> dict:
    """Every measurement of the report, in order: training, forward, variants, /inference."""
    from zoo import encoder as zoo_encoder  # deferred: TensorFlow loads when the measuring starts
    from zoo import unet

    encoder = zoo_encoder.build_encoder()
    print("training throughput ...", flush=True)
    training = bench_training(images, masks, config, encoder)
    print("forward cost ...", flush=True)
    forward = bench_forward(unet.build(config, encoder=encoder), images)
    print("every variant's latency ...", flush=True)
    variants = bench_variants(encoder)
    print("/inference ...", flush=True)
    http = bench_http(model_path, requests_per_size)
    return {"training": training, "forward": forward, "http": http, "variants": variants}


def _versions() -> str:
    from zoo.saving import versions  # deferred: zoo.saving loads Keras

    return ", ".join(f"{k} {v}" for k, v in versions().items())


if __name__ == "__main__":
    sys.exit(main())
