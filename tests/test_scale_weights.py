"""Where a two-scale decoder trusts its full-size pass (ablations.evaluate.scale_weights)."""
from __future__ import annotations

import numpy as np

from test_ablations import cache_home  # noqa: F401  (a fixture, for in_process)


def _saved(tmp_path, config, bias=None):
    import keras

    from zoo import saving, unet
    from zoo.encoder import TAP_SETS, build_encoder

    keras.utils.set_random_seed(0)
    model = unet.build(config, encoder=build_encoder(None, TAP_SETS["narrow"]))
    if bias is not None:
        layer = unet.decoder_of(model).get_layer("scale_weight")
        kernel, _ = layer.get_weights()
        layer.set_weights([kernel, np.array([bias], np.float32)])
    path = tmp_path / f"{config.name}.keras"
    saving.save(model, path, {"config": config.to_dict(), "data": {"trained_on": ["synth_b", "synth_c"]}})
    return path


def test_the_weight_map_says_which_pass_the_decoder_trusts(tmp_path, in_process):
    from ablations.evaluate.scale_weights import main
    from zoo.config import DecoderConfig

    config = DecoderConfig(width=0.25, output_stride=2, scale_fusion="attention")
    for bias, weight in ((None, "0.500"), (6.0, "0.998")):
        model = _saved(tmp_path, config, bias)
        status, out, err = in_process(main, "--model", str(model), "--area", "synth_a", "--budget", "smoke",
                                      "--out", str(tmp_path / "out"))
        assert status == 0, err
        text = (tmp_path / "out" / "scale_weights_synth_a.md").read_text()
        row = next(line for line in text.splitlines() if line.startswith("| 21"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == "16" and cells[2] == weight and cells[3] == weight  # both kinds of pixel
        assert "trained on synth_b, synth_c" in text
        assert (tmp_path / "out" / "scale_weights_synth_a.png").stat().st_size > 10_000
    status, _, err = in_process(main, "--model", str(model), "--area", "atlantis", "--budget", "smoke",
                                "--out", str(tmp_path / "out"))
    assert status == 2 and "no tiles of area 'atlantis'" in err and "synth_a" in err
    one_scale = _saved(tmp_path, DecoderConfig(width=0.25, output_stride=2))
    status, _, err = in_process(main, "--model", str(one_scale), "--area", "synth_a", "--budget", "smoke",
                                "--out", str(tmp_path / "out"))
    assert status == 2 and "not a two-scale decoder" in err
