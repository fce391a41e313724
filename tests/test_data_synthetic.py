"""data.synthetic: synthetic scenes are deterministic, and their folders pass the checks and are cached."""

from __future__ import annotations

import numpy as np
import pytest

from data import folders, synthetic

# --------------------------------------------------------------------------- synthetic data


def test_synthetic_scenes_are_deterministic_and_realistic_enough():
    first = [synthetic.synthetic_scene(np.random.default_rng(0), 64) for _ in range(2)]
    assert np.array_equal(first[0][0], first[1][0]) and np.array_equal(first[0][1], first[1][1])
    rng = np.random.default_rng(1)
    scenes = [synthetic.synthetic_scene(rng, 64) for _ in range(50)]
    images, masks = np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])
    assert images.shape == (50, 64, 64, 3) and images.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    empty = np.mean([m.max() == 0 for m in masks])
    assert 0.15 <= empty <= 0.45, empty


def test_synthetic_folder_passes_the_checks_and_groups_2x2(tmp_path):
    root = synthetic.write_synthetic_folder(tmp_path / "synth", n=12, size=32, seed=0)
    samples = folders.scan_folder(root, check=True)
    assert len(samples) == 12 and {s.area for s in samples} == {"synth_a", "synth_b", "synth_c"}
    assert all(sum(t.group == s.group for t in samples) == 4 for s in samples)
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no staging folder left behind
    with pytest.raises(FileExistsError):
        synthetic.write_synthetic_folder(root, n=2, size=32)


def test_default_synthetic_root_is_cached_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = synthetic.default_synthetic_root(4, 32, 7)
    assert root.is_relative_to(tmp_path) and len(folders.scan_folder(root)) == 4
    stamp = (root / "index.csv").stat().st_mtime_ns
    assert synthetic.default_synthetic_root(4, 32, 7) == root
    assert (root / "index.csv").stat().st_mtime_ns == stamp
