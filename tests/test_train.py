"""training.train: a trial's training features are freed once the trial is over."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from ablations import studies
from training import features, train
from zoo import encoder as zoo_encoder
from zoo import unet


def test_training_features_are_freed_after_fit():
    # TensorFlow keeps the tf.data generator that fit wraps around a PyDataset alive in a
    # global registry; a study that encodes each augmentation in turn then held every
    # earlier cache (21 GiB peak for six augmentations at the standard budget).
    model = unet.build(studies.DEFAULT_DECODER, encoder=zoo_encoder.build_encoder(None))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    masks = (rng.random((6, 64, 64)) > 0.8).astype(np.uint8)
    cache = features.encode(
        model, images, masks, copies=1, augmentation="none", seed=0, progress=lambda line: None
    )
    alive = weakref.ref(cache)

    history, seconds = train.train_decoder(model, studies.Recipe(batch_size=4), cache, epochs=1, seed=0)

    assert history["loss"] and seconds > 0
    del cache
    gc.collect()
    assert alive() is None, "the training features outlived the trial"


def test_a_trials_initial_weights_depend_only_on_its_own_seed():
    import keras
    import keras_tuner

    from ablations import search

    encoder = zoo_encoder.build_encoder(None)
    hypermodel = search.StudyHyperModel(
        studies.STUDIES["loss"], studies.DEFAULT_DECODER, 2, search.TrialData(encoder, None, None, None, None)
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    hp.values.update({"loss": "bce_dice", "seed": 1})

    def decoder_weights_after(earlier_draws: int):
        keras.utils.set_random_seed(99)
        for _ in range(earlier_draws):  # what earlier trials or a restart drew
            keras.random.normal((3,), seed=None)
            unet.build(studies.DEFAULT_DECODER, encoder=encoder)
        return [np.asarray(w) for w in unet.decoder_of(hypermodel.build(hp)).trainable_weights]

    first, later = decoder_weights_after(0), decoder_weights_after(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, later))
    hp.values["seed"] = 0
    assert not all(np.array_equal(a, b) for a, b in zip(first, decoder_weights_after(0)))


def test_a_run_continued_from_its_saved_state_trains_as_if_never_stopped():
    # Successive halving's promise: a survivor continued from its first rung's weights,
    # optimizer state and batch order ends where an uninterrupted run ends.
    encoder = zoo_encoder.build_encoder(None)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    masks = (rng.random((8, 64, 64)) > 0.8).astype(np.uint8)
    recipe = studies.Recipe(batch_size=4)

    def fresh():
        import keras

        keras.utils.set_random_seed(3)
        return unet.build(studies.DEFAULT_DECODER, encoder=encoder)

    model = fresh()
    cache = features.encode(
        model, images, masks, copies=2, augmentation="flips", seed=0, progress=lambda line: None
    )
    train.train_decoder(model, recipe, cache, epochs=3, seed=0, eager=True)
    uninterrupted = [np.asarray(w) for w in unet.decoder_of(model).weights]

    stopped = fresh()
    train.train_decoder(stopped, recipe, cache, epochs=1, seed=0, schedule_epochs=3, eager=True)
    state = train.optimizer_variables(stopped)
    weights = [np.asarray(w) for w in unet.decoder_of(stopped).weights]
    continued = fresh()
    for variable, value in zip(unet.decoder_of(continued).weights, weights):
        variable.assign(value)
    history, _ = train.train_decoder(
        continued,
        recipe,
        cache,
        epochs=3,
        seed=0,
        schedule_epochs=3,
        initial_epoch=1,
        optimizer_state=state,
        eager=True,
    )
    assert len(history["loss"]) == 2

    def distance(model):
        return max(
            float(np.abs(a - np.asarray(b)).max())
            for a, b in zip(uninterrupted, unet.decoder_of(model).weights)
        )

    # Continued, it ends where the uninterrupted run ends; without the optimizer state
    # (moments, step count: the cosine restarts) it differs by about 1e-2.
    assert distance(continued) < 1e-6
    restarted = fresh()
    for variable, value in zip(unet.decoder_of(restarted).weights, weights):
        variable.assign(value)
    train.train_decoder(
        restarted, recipe, cache, epochs=3, seed=0, schedule_epochs=3, initial_epoch=1, eager=True
    )
    assert distance(restarted) > 1e-3


def test_sampling_by_area_draws_each_city_equally_often_in_an_epoch_of_the_same_length():
    """Recipe.sampling="areas": the pool's largest city (Dar es Salaam, 966 of 1,638 tiles)
    must not decide what the decoder learns, so each area fills an equal part of the epoch;
    a small area's tiles each repeat as evenly as possible, a large one's are a random part."""
    areas = np.array(["dar"] * 60 + ["kath"] * 10 + ["nbo"] * 20, dtype=object)
    rng = np.random.default_rng(0)
    order = train.area_balanced_order(rng, areas)
    assert len(order) == len(areas)
    assert {name: int((areas[order] == name).sum()) for name in ("dar", "kath", "nbo")} == {
        "dar": 30,
        "kath": 30,
        "nbo": 30,
    }
    assert sorted(set(np.bincount(order, minlength=90)[60:70])) == [3]  # each Kathmandu tile thrice
    assert sorted(set(np.bincount(order, minlength=90)[70:90])) == [1, 2]  # Nairobi's: once or twice
    assert len(set(order[areas[order] == "dar"])) == 30  # 30 different Dar tiles of 60
    assert not np.array_equal(order, train.area_balanced_order(rng, areas))  # each epoch draws anew

    class Pool:
        count, copies = 90, 2

    # Without areas an epoch is the seeded permutation every recorded curve was trained with.
    plain = train.FeatureBatches(Pool(), 16, seed=3)
    expected = np.random.default_rng(3)
    assert np.array_equal(plain.order, expected.permutation(90))
    balanced = train.FeatureBatches(Pool(), 16, seed=3, areas=areas)
    assert len(balanced) == len(plain) and (areas[balanced.order] == "kath").sum() == 30


def test_a_recipe_sampling_by_area_needs_areas_and_reads_back_as_older_recipes_did():
    import pytest

    assert "sampling" not in studies.Recipe().to_dict()  # curves recorded before the field compare equal
    assert studies.Recipe(**studies.Recipe(sampling="areas").to_dict()).sampling == "areas"
    with pytest.raises(ValueError, match="sampling"):
        studies.Recipe(sampling="cities")
    with pytest.raises(ValueError, match="area"):
        train.train_decoder(None, studies.Recipe(sampling="areas"), None, epochs=1, seed=0)


def test_cross_validation_gives_each_fold_the_areas_of_its_own_training_tiles(monkeypatch):
    """A fold trains on every area but its held-out one; sampling by area must balance those
    (a held-out city's tiles must never be drawn into its fold's training)."""
    from types import SimpleNamespace

    from training import folds

    areas = np.array(["a", "b", "a", "c", "b", "c", "c"], dtype=object)
    seen = []

    def train_decoder(model, recipe, training, *args, areas=None, **kwargs):
        seen.append((training.index.tolist(), list(areas)))
        return {}, 0.0

    monkeypatch.setattr(train, "train_decoder", train_decoder)
    monkeypatch.setattr(folds, "ValidationCurve", lambda *a, **k: SimpleNamespace(counts=[np.zeros((2, 4))]))
    pool = SimpleNamespace(count=len(areas), copies=1)
    folds.cross_validate(
        lambda: None,
        studies.Recipe(sampling="areas"),
        pool,
        folds.area_folds(list(areas)),
        epochs=1,
        seed=0,
        first_model=SimpleNamespace(),
        progress=lambda _: None,
        areas=areas,
    )
    assert seen[0] == ([1, 3, 4, 5, 6], ["b", "c", "b", "c", "c"])  # without area a
    assert [sorted(set(a)) for _, a in seen] == [["b", "c"], ["a", "c"], ["a", "b"]]
