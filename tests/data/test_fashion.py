"""Fashion-MNIST's IDX reader, and the clutter task built from its garments (``objects="fashion"``)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from convrnn.data import clutter, fashion
from convrnn.data.clutter import ClutterConfig, ClutterDataset, generate
from convrnn.data.fashion import FashionMNISTError, load_fashion_mnist, read_idx
from convrnn.train.data import build_datasets, default_image_size


def _have_fashion() -> str | None:
    """None if the real files are installed, else why not (the loader's own one-line message)."""
    try:
        fashion.fashion_files("train")
        fashion.fashion_files("test")
    except FileNotFoundError as e:
        return str(e)
    return None


MISSING = _have_fashion()
needs_fashion = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_set(folder, n: int = 6, gz: bool = True, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for name, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        path = folder / f"{split}-{name}{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(_idx(arr)) if gz else _idx(arr))
    return images, labels


@pytest.fixture
def fresh_banks():
    """Garment banks are cached per process: clear them around tests that point at other files."""
    clutter._bank.cache_clear()
    clutter._fashion_bank.cache_clear()
    yield
    clutter._bank.cache_clear()
    clutter._fashion_bank.cache_clear()


@pytest.mark.parametrize("gz", [True, False])
def test_reads_what_was_written(tmp_path, gz):
    images, labels = _write_set(tmp_path, gz=gz)
    with pytest.warns(UserWarning, match="the test split has 10000"):
        got_images, got_labels = load_fashion_mnist("test", root=tmp_path)
    assert np.array_equal(got_images, images) and got_images.dtype == np.uint8
    assert np.array_equal(got_labels, labels) and got_labels.dtype == np.int64


def test_root_from_environment(tmp_path, monkeypatch):
    _write_set(tmp_path)
    monkeypatch.setenv("CONVRNN_FASHION_MNIST", str(tmp_path))
    assert fashion.fashion_dir() == tmp_path
    with pytest.warns(UserWarning):
        assert load_fashion_mnist("test")[0].shape == (6, 28, 28)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz not found; install it with `apt-get"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist("val", root=tmp_path)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "bad magic number empty"),
        (b"\x01\x00\x08\x01", "bad magic number 01000801"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (
            bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x01\x02",
            r"shape \(5,\) \(5 bytes of data\) but the file holds 2",
        ),
    ],
)
def test_malformed_files_name_the_file(tmp_path, payload, match):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(FashionMNISTError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_cut_gzip_stream_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(_idx(np.arange(100, dtype=np.uint8)))[:20])
    with pytest.raises(FashionMNISTError, match=r"labels\.gz: unreadable IDX file"):
        read_idx(path)


def test_labels_must_match_images(tmp_path):
    _write_set(tmp_path, n=6)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(5, np.uint8))))
    with pytest.raises(FashionMNISTError, match="5 labels for 6 images"):
        load_fashion_mnist("test", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.full(6, 10, np.uint8))))
    with pytest.raises(FashionMNISTError, match="label 10 out of range"):
        load_fashion_mnist("test", root=tmp_path)


@needs_fashion
def test_the_installed_dataset():
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the dataset's well-known first labels
    test_images, test_labels = load_fashion_mnist("test")
    assert test_images.shape == (10000, 28, 28)
    assert np.bincount(test_labels).tolist() == [1000] * 10


# ----------------------------------------------------------------------------------------------------------------
# Clutter from garments


def test_objects_knob_validation_and_defaults():
    with pytest.raises(ValueError, match=r"ClutterConfig\.objects must be one of \('digits', 'fashion'\)"):
        ClutterConfig(objects="cifar")
    # The default is the digits task, and its cache key is the one it had before the knob existed.
    assert ClutterConfig() == ClutterConfig(objects="digits")
    assert '"objects"' not in clutter._knobs("train", 5, 0, ClutterConfig())
    assert clutter.cache_path("train", 5, 0).name.startswith("clutter-train-32px-n5-s0-")
    assert clutter.classes(ClutterConfig()) == [str(d) for d in range(10)]
    assert clutter.classes(ClutterConfig(objects="fashion"))[9] == "Ankle boot"
    assert default_image_size("clutter-fashion") == 32 and default_image_size("/data/imagenet") == 224


def test_garments_missing_is_one_clear_line(tmp_path, monkeypatch, fresh_banks):
    monkeypatch.setenv("CONVRNN_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        generate(4, 0, config=ClutterConfig(objects="fashion"))
    assert "\n" not in str(info.value)


@needs_fashion
def test_garment_clutter_is_deterministic_and_differs_from_digits():
    cfg = ClutterConfig(objects="fashion", image_size=40)
    a, la = generate(80, 3, config=cfg)
    b, lb = generate(80, 3, config=cfg)
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    assert a.shape == (80, 40, 40) and a.dtype == np.uint8
    assert not np.array_equal(a, generate(80, 3, config=ClutterConfig(image_size=40))[0])
    assert not np.array_equal(a, generate(80, 3, "val", cfg)[0])
    assert (a == 0).mean() > 0.3  # a black background
    # Targets are shown at full brightness: most images hold a pixel brighter than a distractor can be (0.7 x
    # 255). Not every one: resampling a garment smaller than its photograph can average its brightest pixel away.
    assert np.median(a.reshape(80, -1).max(axis=1)) > 0.7 * 255


@needs_fashion
def test_garment_splits_keep_fashion_mnists_split():
    _, train_labels = load_fashion_mnist("train")
    train, val = clutter._bank("train", "fashion"), clutter._bank("val", "fashion")
    assert len(val.origin) == 10000 and np.array_equal(val.origin, np.arange(10000))  # every test photograph
    assert len(train.origin) == 12000 and np.bincount(train_labels[train.origin]).tolist() == [1200] * 10
    out = clutter._generate(300, 1, "val", ClutterConfig(objects="fashion"))
    _, test_labels = load_fashion_mnist("test")
    assert np.array_equal(test_labels[out["exemplar"]], out["labels"])  # the target is a photograph of its class
    counts = np.bincount(out["labels"], minlength=10)
    assert counts.min() >= 15, counts


@needs_fashion
def test_garment_occlusion_bound_counts_the_silhouette():
    for occlusion in (0.0, 0.3):
        out = clutter._generate(200, 2, "train", ClutterConfig(objects="fashion", occlusion=occlusion))
        assert out["occluded"].max() <= occlusion
        assert out["debris"].mean() > 3
    free = clutter._generate(200, 2, "train", ClutterConfig(objects="fashion", occlusion=1.0))
    assert free["occluded"].max() > 0.3  # without the bound debris do hide more: the check above has teeth


@needs_fashion
def test_garment_cache_and_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path))
    cfg = ClutterConfig(objects="fashion")
    ds = ClutterDataset("val", 16, seed=1, config=cfg)
    assert ds.classes[0] == "T-shirt/top" and ds[0][0].shape == (3, 32, 32)
    (path,) = tmp_path.glob("clutter-fashion-val-32px-n16-s1-*.npz")
    assert path == clutter.cache_path("val", 16, 1, cfg)
    assert clutter.cache_path("val", 16, 1, cfg) != clutter.cache_path("val", 16, 1, ClutterConfig())
    train, val, classes = build_datasets("clutter-fashion", 32, 0, 16, 8, False)
    assert classes == fashion.CLASSES and len(train) == 16 and len(val) == 8
    assert build_datasets("clutter", 32, 0, 16, 8, False)[2] == [str(d) for d in range(10)]


def test_task_knobs_ride_in_the_data_string(tmp_path, monkeypatch):
    from convrnn.train.data import builtin_task

    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path))
    assert builtin_task("clutter") == {"objects": "digits"}
    assert builtin_task("/data/imagenet") is None and builtin_task("clutterx:{debris: 1}") is None
    knobs = builtin_task("clutter-fashion:{debris: 9, distractor_scale: [0.6, 0.9]}")
    assert knobs == {"debris": 9, "distractor_scale": [0.6, 0.9], "objects": "fashion"}
    train, _, _ = build_datasets("clutter:{debris: 0, distractors: 0}", 32, 0, 8, 4, False)
    assert train.base.config == ClutterConfig(debris=0, distractors=0)
    assert np.array_equal(train.base.images, generate(8, 0, config=ClutterConfig(debris=0, distractors=0))[0])
    with pytest.raises(ValueError, match=r"unknown knob\(s\) objects, size; knobs: distractors, debris"):
        builtin_task("clutter:{size: 3, objects: fashion}")
    with pytest.raises(ValueError, match="after ':' comes a YAML mapping of knobs"):
        builtin_task("clutter:[1, 2]")
    with pytest.raises(ValueError, match=r"ClutterConfig\.debris"):
        build_datasets("clutter:{debris: -1}", 32, 0, 8, 4, False)
