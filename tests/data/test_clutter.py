"""The cluttered-digits generator: determinism, splits, occlusion bound, cache, dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convrnn.data import clutter
from convrnn.data.clutter import ClutterConfig, ClutterDataset, generate, load_clutter

pytest.importorskip("sklearn")


def test_same_seed_same_bytes_other_seed_or_split_differs():
    a_img, a_lab = generate(64, seed=3)
    b_img, b_lab = generate(64, seed=3)
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    c_img, _ = generate(64, seed=4)
    assert not np.array_equal(a_img, c_img)
    v_img, _ = generate(64, seed=3, split="val")
    assert not np.array_equal(a_img, v_img)


def test_images_do_not_depend_on_thread_count(monkeypatch):
    cfg = ClutterConfig(image_size=64)  # 256 images per chunk at 64 px: 300 images make two chunks
    monkeypatch.setattr(clutter, "_cpu_count", lambda: 1)
    one, one_lab = generate(300, 5, config=cfg)
    monkeypatch.setattr(clutter, "_cpu_count", lambda: 2)
    two, two_lab = generate(300, 5, config=cfg)
    assert np.array_equal(one, two) and np.array_equal(one_lab, two_lab)


@pytest.mark.parametrize("size", [32, 45, 64])
def test_shapes_dtypes_and_range(size):
    images, labels = generate(40, 0, config=ClutterConfig(image_size=size))
    assert images.shape == (40, size, size) and images.dtype == np.uint8
    assert labels.shape == (40,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9
    assert (images == 0).mean() > 0.3  # a black background
    assert (images.reshape(40, -1).max(axis=1) == 255).all()  # every target is drawn at full intensity


def test_empty_split():
    images, labels = generate(0, 0)
    assert images.shape == (0, 32, 32) and labels.shape == (0,)


def test_all_classes_present_and_balanced():
    _, labels = generate(1000, 0)
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 50, counts


def test_train_and_val_use_disjoint_handwriting():
    train, val = clutter._exemplar_indices("train"), clutter._exemplar_indices("val")
    assert not set(train) & set(val)
    assert len(train) + len(val) == 1797
    assert 0.18 < len(val) / 1797 < 0.22
    # Every handwritten digit a split draws (target, distractor or debris) comes from its own exemplars.
    for split, allowed in (("train", train), ("val", val)):
        origin = clutter._bank(split).origin
        assert set(origin[origin >= 0]) == set(allowed)
    targets = clutter._generate(300, 0, "val", ClutterConfig(source="handwritten"))["exemplar"]
    assert (targets >= 0).all() and set(targets) <= set(val)


def test_source_knob():
    assert (clutter._generate(50, 0, "train", ClutterConfig(source="font"))["exemplar"] == -1).all()
    assert (clutter._generate(50, 0, "train", ClutterConfig(source="handwritten"))["exemplar"] >= 0).all()
    both = clutter._generate(200, 0, "train", ClutterConfig())["exemplar"]
    assert 0.3 < (both == -1).mean() < 0.7


def test_occlusion_bound_holds():
    for occlusion in (0.0, 0.3):
        out = clutter._generate(200, 1, "train", ClutterConfig(debris=6, occlusion=occlusion))
        assert out["occluded"].max() <= occlusion
        assert out["debris"].mean() > 3  # debris were drawn, just not over the target


def test_zero_occlusion_leaves_the_target_visible_in_the_pixels():
    # Debris are drawn last from the same stream, so debris=0 gives the same images without them; the
    # target's full-intensity core must keep at least half its brightness when occlusion=0 ...
    clean, _ = generate(200, 2, config=ClutterConfig(debris=0))
    core = clean == 255
    kept, _ = generate(200, 2, config=ClutterConfig(debris=8, occlusion=0.0))
    assert (kept[core] >= 127).all()
    # ... and does not when occlusion is unbounded (so the check above has teeth).
    hidden, _ = generate(200, 2, config=ClutterConfig(debris=8, occlusion=1.0))
    assert (hidden[core] < 127).mean() > 0.02


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("image_size", {"image_size": 31}),
        ("image_size", {"image_size": 65}),
        ("image_size", {"image_size": 32.0}),
        ("distractors", {"distractors": -1}),
        ("debris", {"debris": "6"}),
        ("occlusion", {"occlusion": 1.5}),
        ("rotation", {"rotation": -1.0}),
        ("source", {"source": "cursive"}),
        ("target_scale", {"target_scale": (0.8, 0.5)}),
        ("stroke", {"stroke": (0.4,)}),
        ("debris_intensity", {"debris_intensity": (0.5, 1.5)}),
    ],
)
def test_config_validation_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=rf"ClutterConfig\.{field}\b"):
        ClutterConfig(**kwargs)


def test_config_accepts_lists_and_keys_the_cache_the_same():
    cfg = ClutterConfig(stroke=[0.4, 0.7])
    assert cfg.stroke == (0.4, 0.7) and cfg == ClutterConfig()
    assert clutter.cache_path("train", 5, 0, cfg) == clutter.cache_path("train", 5, 0, ClutterConfig())


def test_digits_match_sklearn():
    from sklearn.datasets import load_digits

    images, labels = clutter._load_digits()
    digits = load_digits()
    assert np.array_equal(images, digits.images) and np.array_equal(labels, digits.target)


def test_bad_split_and_n():
    with pytest.raises(ValueError, match="split"):
        generate(4, 0, split="test")
    with pytest.raises(ValueError, match="split"):
        load_clutter("validation", 4)
    with pytest.raises(ValueError, match="n must"):
        generate(-1, 0)


def test_cache_round_trip(tmp_path, monkeypatch):
    cfg = ClutterConfig(distractors=1)
    images, labels = load_clutter("val", 30, seed=7, config=cfg, cache_dir=tmp_path)
    path = clutter.cache_path("val", 30, 7, cfg, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert np.array_equal(images, generate(30, 7, "val", cfg)[0])
    mtime = path.stat().st_mtime_ns

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated instead of loading the cache")

    monkeypatch.setattr(clutter, "generate", no_generation)
    again, again_labels = load_clutter("val", 30, seed=7, config=cfg, cache_dir=tmp_path)
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    assert again.dtype == np.uint8 and again_labels.dtype == np.int64
    assert path.stat().st_mtime_ns == mtime
    with np.load(path) as z:
        assert '"distractors": 1' in str(z["knobs"])
    # Another knob is another file.
    assert clutter.cache_path("val", 30, 7, ClutterConfig(distractors=2), tmp_path) != path


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path / "c"))
    load_clutter("train", 5, seed=1)
    assert len(list((tmp_path / "c").glob("clutter-train-*.npz"))) == 1


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(clutter.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        load_clutter("train", 5, seed=1, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_file_is_regenerated(tmp_path):
    path = clutter.cache_path("train", 5, 1, ClutterConfig(), tmp_path)
    path.write_bytes(b"not an npz")
    images, _ = load_clutter("train", 5, seed=1, cache_dir=tmp_path)
    assert np.array_equal(images, generate(5, 1)[0])


def test_dataset_is_normalised_three_channel(tmp_path):
    ds = ClutterDataset("train", 12, seed=2, cache_dir=tmp_path)
    assert len(ds) == 12 and ds.classes == [str(d) for d in range(10)]
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and y == int(ds.labels[3])
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    gray = torch.from_numpy(ds.images[3]).float() / 255
    torch.testing.assert_close(x * std + mean, gray.expand(3, -1, -1))
    # Background pixels sit at -mean/std in every channel.
    assert torch.allclose(x[:, 0, 0], -mean[:, 0, 0] / std[:, 0, 0]) or ds.images[3][0, 0] != 0
