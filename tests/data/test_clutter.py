"""The cluttered-digits generator: determinism, splits, occlusion bound, cache, per-image meta, dataset."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from convrnn.data import clutter, fashion
from convrnn.data.clutter import ClutterConfig, ClutterDataset, generate, load_clutter, load_clutter_meta
from tests.data.test_fashion import needs_fashion  # skips, saying why, where Fashion-MNIST is not installed

pytest.importorskip("sklearn")


META = {"occluded": np.float32, "debris": np.int64, "exemplar": np.int64}


@pytest.fixture
def fresh_banks():
    """Garment banks and fingerprints are cached per process: clear them around tests that use other files."""
    caches = (clutter._bank, clutter._fashion_bank, clutter._fashion_fingerprint)
    for f in caches:
        f.cache_clear()
    yield
    for f in caches:
        f.cache_clear()


def test_same_seed_same_bytes_other_seed_or_split_differs():
    a_img, a_lab = generate(64, seed=3)
    b_img, b_lab = generate(64, seed=3)
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    c_img, _ = generate(64, seed=4)
    assert not np.array_equal(a_img, c_img)
    v_img, _ = generate(64, seed=3, split="val")
    assert not np.array_equal(a_img, v_img)


def test_test_split_is_deterministic_and_differs_from_val_and_train():
    t_img, t_lab = generate(32, seed=3, split="test")
    again, again_lab = generate(32, seed=3, split="test")
    assert t_img.tobytes() == again.tobytes() and t_lab.tobytes() == again_lab.tobytes()
    assert t_img.shape == (32, 32, 32) and t_img.dtype == np.uint8
    v_img, _ = generate(32, seed=3, split="val")
    assert not any(np.array_equal(t, v) for t in t_img for v in v_img)  # no test image is a val image
    assert not np.array_equal(t_img, generate(32, seed=3)[0])
    assert not np.array_equal(t_img, generate(32, seed=4, split="test")[0])
    assert clutter.cache_path("test", 32, 3).name.startswith("clutter-test-32px-n32-s3-")
    assert clutter.cache_path("test", 32, 3) != clutter.cache_path("val", 32, 3)


def test_test_split_draws_the_held_out_handwriting():
    train, val = clutter._exemplar_indices("train"), clutter._exemplar_indices("val")
    assert np.array_equal(clutter._exemplar_indices("test"), val)
    assert clutter._bank("test", "digits") is clutter._bank("val", "digits")  # one bank, built once
    targets = clutter._generate(40, 0, "test", ClutterConfig(source="handwritten"))["exemplar"]
    assert (targets >= 0).all() and set(targets) <= set(val) and not set(targets) & set(train)


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
    for call in (
        lambda: generate(4, 0, split="testing"),
        lambda: load_clutter("validation", 4),
        lambda: load_clutter_meta("Test", 4),
        lambda: clutter.cache_path("eval", 4),
        lambda: ClutterDataset("holdout", 4),
    ):
        with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\)") as info:
            call()
        assert "\n" not in str(info.value)
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
    monkeypatch.setattr(clutter, "_generate", no_generation)
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


def test_meta_matches_generate_and_survives_the_cache(tmp_path, monkeypatch):
    cfg = ClutterConfig(debris=8, occlusion=0.2)
    meta = load_clutter_meta("test", 24, seed=5, config=cfg, cache_dir=tmp_path)
    assert set(meta) == {"images", "labels", *META}
    assert meta["images"].shape == (24, 32, 32) and meta["images"].dtype == np.uint8
    assert meta["labels"].shape == (24,) and meta["labels"].dtype == np.int64
    for k, dtype in META.items():
        assert meta[k].shape == (24,) and meta[k].dtype == dtype, k
    ref = clutter._generate(24, 5, "test", cfg)
    for k in ("images", "labels", "debris", "exemplar"):
        assert np.array_equal(meta[k], ref[k]), k
    assert np.array_equal(meta["occluded"], ref["occluded"].astype(np.float32))
    assert (meta["occluded"] >= 0).all() and (meta["occluded"] <= np.float32(0.2)).all()
    assert (meta["debris"] >= 0).all() and (meta["debris"] <= 8).all()
    path = clutter.cache_path("test", 24, 5, cfg, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # one file, no temporary left behind
    with np.load(path) as z:
        assert set(z.files) == {"images", "labels", "knobs", *META}

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated instead of loading the cache")

    monkeypatch.setattr(clutter, "_generate", no_generation)
    again = load_clutter_meta("test", 24, seed=5, config=cfg, cache_dir=tmp_path)
    for k in meta:
        assert again[k].dtype == meta[k].dtype and np.array_equal(again[k], meta[k]), k
    images, labels = load_clutter("test", 24, seed=5, config=cfg, cache_dir=tmp_path)
    assert np.array_equal(images, meta["images"]) and np.array_equal(labels, meta["labels"])
    ds = ClutterDataset("test", 24, seed=5, config=cfg, cache_dir=tmp_path)
    assert set(ds.meta) == set(META)
    for k in META:
        assert np.array_equal(ds.meta[k], meta[k]), k


def test_old_format_cache_file_is_regenerated(tmp_path, monkeypatch):
    # What the older code wrote: images, labels and knobs only, under the same name (the key did not change).
    path = clutter.cache_path("train", 12, 4, ClutterConfig(), tmp_path)
    images, labels = generate(12, 4)
    knobs = clutter._knobs("train", 12, 4, ClutterConfig())
    np.savez(path, images=images, labels=labels, knobs=np.array(knobs))
    calls = []
    real = clutter._generate
    monkeypatch.setattr(clutter, "_generate", lambda *a: calls.append(a) or real(*a))
    got_images, got_labels = load_clutter("train", 12, seed=4, cache_dir=tmp_path)
    assert len(calls) == 1 and np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # rewritten in place, with the meta arrays
    with np.load(path) as z:
        assert set(META) <= set(z.files) and str(z["knobs"]) == knobs
    meta = load_clutter_meta("train", 12, seed=4, cache_dir=tmp_path)
    assert len(calls) == 1  # now a cache hit
    assert np.array_equal(meta["debris"], real(12, 4, "train", ClutterConfig())["debris"])


def test_cache_file_with_a_short_meta_array_is_regenerated(tmp_path):
    path = clutter.cache_path("val", 6, 2, ClutterConfig(), tmp_path)
    good = load_clutter_meta("val", 6, seed=2, cache_dir=tmp_path)
    bad = dict(good, debris=good["debris"][:3])
    np.savez(path, **bad, knobs=np.array(clutter._knobs("val", 6, 2, ClutterConfig())))
    again = load_clutter_meta("val", 6, seed=2, cache_dir=tmp_path)
    assert np.array_equal(again["debris"], good["debris"])


def _fake_fashion(folder) -> None:
    """A few random 'garments' per class in both Fashion-MNIST files (only the real ones are 60,000 + 10,000)."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 30)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 4:24, 6:22] = np.maximum(images[:, 4:24, 6:22], 60)  # a solid body in every photograph
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
            (folder / f"{prefix}-{name}.gz").write_bytes(gzip.compress(raw))


@pytest.mark.filterwarnings("ignore:.*images, the (train|test) split has:UserWarning")
def test_garment_test_split_uses_the_test_photographs(tmp_path, monkeypatch, fresh_banks):
    _fake_fashion(tmp_path)
    monkeypatch.setenv("CONVRNN_FASHION_MNIST", str(tmp_path))
    cfg = ClutterConfig(objects="fashion")
    assert clutter._bank("test", "fashion") is clutter._bank("val", "fashion")
    assert np.array_equal(clutter._bank("test", "fashion").origin, np.arange(30))  # the whole (fake) test file
    assert clutter._knobs("test", 8, 1, cfg).replace('"test"', '"val"') == clutter._knobs("val", 8, 1, cfg)
    meta = load_clutter_meta("test", 16, seed=1, config=cfg, cache_dir=tmp_path / "cache")
    _, test_labels = fashion.load_fashion_mnist("test")
    assert np.array_equal(test_labels[meta["exemplar"]], meta["labels"])  # the target is a test photograph
    assert not np.array_equal(meta["images"], generate(16, 1, "val", cfg)[0])
    assert (tmp_path / "cache" / clutter.cache_path("test", 16, 1, cfg).name).is_file()


@needs_fashion
def test_real_garment_test_split(tmp_path):
    cfg = ClutterConfig(objects="fashion")
    a = load_clutter_meta("test", 24, seed=2, config=cfg, cache_dir=tmp_path)
    b, _ = generate(24, 2, "test", cfg)
    assert a["images"].tobytes() == b.tobytes()
    assert not np.array_equal(b, generate(24, 2, "val", cfg)[0])
    _, test_labels = fashion.load_fashion_mnist("test")
    assert np.array_equal(test_labels[a["exemplar"]], a["labels"])
