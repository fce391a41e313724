"""An ensemble of decoders on one frozen encoder, saved and served like a single U-Net.

`image (RGB 0..255) -> preprocess -> encoder -> decoder_0 .. decoder_{N-1} -> mean probability
-> its logit`. The encoder, the costly part, runs once for all members. The output is one logit
channel, as a single U-Net's, so everything that applies sigmoid to a model's output (zoo.predict,
the app) serves the members' averaged probability unchanged.

Members are decoders trained separately (e.g. on cached features by ablations.train):
`ensemble_from` copies their weights into one model. A saved ensemble's metadata records its
members' configs under "ensemble" (`ensemble_metadata`); it has no "config" of its own.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from zoo import unet
from zoo.config import PREPROCESSING, DecoderConfig
from zoo.encoder import TAPS, build_encoder
from zoo.preprocessing import preprocessing_layer

# Probabilities are kept this far from 0 and 1, so the logit of their mean stays finite
# (within +-16.1) when every member is certain.
EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="zoo")
class MeanProbabilityLogit(layers.Layer):
    """The logit of the mean of the members' sigmoid probabilities (a list of logit maps)."""

    def call(self, logits):
        stacked = ops.stack(logits, axis=0)
        positive = ops.mean(ops.sigmoid(stacked), axis=0)
        # 1 - positive, computed from the logits: subtracting a probability near 1 from 1
        # would keep few of its bits, and a confident single member must keep its logit.
        negative = ops.mean(ops.sigmoid(-stacked), axis=0)
        return ops.log(ops.maximum(positive, EPSILON)) - ops.log(ops.maximum(negative, EPSILON))


def build_ensemble(configs: list[DecoderConfig], encoder: keras.Model | None = None,
                   weights="imagenet") -> keras.Model:
    """Untrained members, one per config, on one encoder (shared, as in unet.build)."""
    preprocess = _shared_preprocess([config.preprocess for config in configs])
    _one_scale_only([config.name for config in configs if config.scale_fusion != "none"])
    encoder = encoder or build_encoder(weights, TAPS)
    channels = [t.shape[-1] for t in encoder.outputs]
    decoders = [unet.build_decoder(config, channels, _member_name(i)) for i, config in enumerate(configs)]
    return _assemble(encoder, decoders, preprocess, _ensemble_name(c.name for c in configs))


def ensemble_from(models: list[keras.Model], encoder: keras.Model | None = None) -> keras.Model:
    """One model from trained single U-Nets that share the encoder and preprocessing; each
    member is a copy of a model's decoder (later changes to `models` do not reach it)."""
    preprocess = _shared_preprocess([_preprocess_of(model) for model in models])
    _one_scale_only([model.name for model in models if unet.has_half_scale(model)])
    encoder = encoder or unet.encoder_of(models[0])
    for model in models:
        _check_same_encoder(unet.encoder_of(model), encoder, model.name)
    decoders = [_renamed_copy(unet.decoder_of(model), _member_name(i)) for i, model in enumerate(models)]
    return _assemble(encoder, decoders, preprocess, _ensemble_name(m.name for m in models))


def ensemble_metadata(configs: list[DecoderConfig]) -> dict:
    """What zoo.saving's metadata records of an ensemble's members."""
    return {"ensemble": [config.to_dict() for config in configs]}


def member_configs(metadata: dict) -> list[DecoderConfig]:
    return [DecoderConfig.from_dict(fields) for fields in metadata.get("ensemble", [])]


def _assemble(encoder, decoders, preprocess: str, name: str) -> keras.Model:
    combine = MeanProbabilityLogit(dtype="float32", name="mean_probability")
    # unet.assemble calls its decoder once on the encoder's taps: here that one call feeds
    # every member, so the encoder still runs once.
    members = lambda taps: combine([decoder(taps) for decoder in decoders])  # noqa: E731
    return unet.assemble(encoder, members, name=name, preprocess=preprocess)


def _ensemble_name(members) -> str:
    # "__" between members: TensorFlow name scopes refuse most other separators ("+", " ").
    return "ensemble__" + "__".join(members)


def _member_name(index: int) -> str:
    return f"{unet.DECODER_NAME}_{index}"


def _one_scale_only(two_scale: list[str]) -> None:
    # The members share one encoder pass of the image as given; a two-scale decoder also
    # needs the image's half-size taps, which this assembly does not compute.
    if two_scale:
        raise ValueError(f"an ensemble's members must be one-scale decoders; two-scale: {', '.join(two_scale)}")


def _shared_preprocess(kinds: list[str]) -> str:
    if not kinds:
        raise ValueError("an ensemble needs at least one member")
    # One preprocessing layer feeds every member, so each must have been trained on it.
    if len(set(kinds)) > 1:
        raise ValueError(f"ensemble members must share `preprocess`, got {sorted(set(kinds))}")
    return kinds[0]


def _preprocess_of(model: keras.Model) -> str:
    """The zoo.preprocessing kind a model's "preprocess" layer was made as."""
    def fields(layer):  # what the layer computes, not what it is called or its dtype policy
        return {key: value for key, value in layer.get_config().items() if key not in ("name", "dtype")}

    layer = model.get_layer("preprocess")
    for kind in PREPROCESSING:
        made = preprocessing_layer(kind)
        if type(made) is type(layer) and fields(made) == fields(layer):
            return kind
    raise ValueError(f"model {model.name!r} has a preprocess layer no zoo.preprocessing kind makes")


def _check_same_encoder(encoder: keras.Model, shared: keras.Model, member: str) -> None:
    # A decoder trained on other features (other weights, other taps) would give nonsense.
    if encoder is shared:
        return
    ours, theirs = encoder.get_weights(), shared.get_weights()
    if len(ours) != len(theirs) or not all(np.array_equal(a, b) for a, b in zip(ours, theirs)):
        raise ValueError(f"{member}'s encoder differs from the ensemble's: its decoder was "
                         "trained on other features")


def _renamed_copy(decoder: keras.Model, name: str) -> keras.Model:
    copy = decoder.__class__.from_config({**decoder.get_config(), "name": name})
    copy.set_weights(decoder.get_weights())
    return copy
