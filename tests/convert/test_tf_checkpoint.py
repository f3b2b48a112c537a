"""The TensorBundle reader: real reference checkpoints, damaged copies of them, hand-built bundles, CRC32C."""

import re
import shutil

import numpy as np
import pytest

from convrnn.convert.tf_checkpoint import (
    CheckpointError,
    _crc32c_numpy,
    _crc32c_reference,
    _mask,
    crc32c,
    read_checkpoint,
    read_index,
)
from tests.conftest import REFERENCE_MODELS
from tests.convert.bundle import _entry, _field, _write_bundle, _write_table

SMALL_MODEL = "timedecay_shallow"  # the smallest reference checkpoint (150 kB): used for the damage tests


# --------------------------------------------------------------------------------------------------
# CRC32C


def test_crc32c_known_answers():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert _crc32c_reference(b"123456789") == 0xE3069283
    assert _crc32c_reference(bytes(32)) == 0x8A9136AA


LENGTHS = (0, 1, 2, 3, 4, 5, 7, 63, 64, 127, 128, 129, 255, 1000, 4097, 65539, 300_007)


@pytest.mark.parametrize(
    "params",
    [
        {},  # the defaults
        {"segment": 1000, "max_chunks": 8, "min_chunk": 8},  # many segments, uneven leftovers
        {"segment": 4096, "max_chunks": 1 << 20, "min_chunk": 4},  # chunks of 4 bytes, deep combine trees
    ],
    ids=["default", "small-segments", "tiny-chunks"],
)
def test_crc32c_vectorised_equals_byte_loop(params):
    rng = np.random.default_rng(0)
    for n in LENGTHS:
        data = rng.integers(0, 256, n, dtype=np.uint8)
        start = int(rng.integers(0, 2**32))
        expected = _crc32c_reference(data.tobytes(), start)
        assert _crc32c_numpy(data, start, **params) == expected, n


def test_crc32c_inputs_and_continuation():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 100_003, dtype=np.uint8)
    raw = data.tobytes()
    whole = crc32c(raw)
    assert crc32c(memoryview(raw)) == crc32c(bytearray(raw)) == crc32c(data) == whole
    assert crc32c(raw[77_777:], crc32c(raw[:77_777])) == whole
    floats = data[:100_000].view(np.float32).reshape(100, 250)
    assert crc32c(floats) == crc32c(raw[:100_000])
    assert crc32c(np.asfortranarray(floats)) == crc32c(floats)  # arrays are taken in C order
    assert crc32c(memoryview(raw)[::2]) == crc32c(raw[::2])  # non-contiguous views


def test_mask():
    # LevelDB/TF store ((crc >> 15) | (crc << 17)) + 0xa282ead8, modulo 2**32.
    assert _mask(0) == 0xA282EAD8
    assert _mask(1) == 0xA282EAD8 + (1 << 17)
    assert _mask(0x8000) == 0xA282EAD9
    assert _mask(0xFFFFFFFF) == (0xFFFFFFFF + 0xA282EAD8) % 2**32


# --------------------------------------------------------------------------------------------------
# The reference checkpoints


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_reference_checkpoint_matches_npz(reference_dir, name):
    folder = reference_dir / name
    ckpt = read_checkpoint(folder / "model.ckpt")
    npz = np.load(folder / "weights.npz")
    assert sorted(ckpt) == sorted(npz.files)
    for key in npz.files:
        ref = npz[key]
        assert ckpt[key].dtype == ref.dtype, key
        assert ckpt[key].shape == ref.shape, key
        assert np.array_equal(ckpt[key], ref), key
        assert ckpt[key].flags.c_contiguous and ckpt[key].flags.writeable


def test_every_reference_folder_is_covered(reference_dir):
    found = {p.parent.name for p in reference_dir.glob("*/model.ckpt.index")}
    assert found <= set(REFERENCE_MODELS), sorted(found - set(REFERENCE_MODELS))


def test_read_index_and_subset(reference_dir):
    prefix = reference_dir / SMALL_MODEL / "model.ckpt"
    index = read_index(str(prefix) + ".index")  # a path ending in .index works too
    assert list(index) == sorted(index)
    npz = np.load(prefix.parent / "weights.npz")
    for name, e in index.items():
        assert e.name == name
        assert e.dtype == npz[name].dtype and e.shape == npz[name].shape
        assert e.shard == 0 and e.size == npz[name].nbytes
    names = ["tnn_model/conv2/pre_0/bias", "tnn_model/conv1/memory_decay"]
    sub = read_checkpoint(str(prefix), names)
    assert list(sub) == names
    for n in names:
        assert np.array_equal(sub[n], npz[n])
    with pytest.raises(CheckpointError, match=r"no tensor named 'nope' in the checkpoint"):
        read_checkpoint(prefix, ["nope"])


# --------------------------------------------------------------------------------------------------
# Damaged copies


@pytest.fixture
def small_copy(reference_dir, tmp_path):
    src = reference_dir / SMALL_MODEL
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(src / f"model.ckpt{suffix}", tmp_path / f"model.ckpt{suffix}")
    return tmp_path / "model.ckpt"


def _data(prefix):
    return prefix.parent / (prefix.name + ".data-00000-of-00001")


def _index(prefix):
    return prefix.parent / (prefix.name + ".index")


def _flip(path, pos):
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x10
    path.write_bytes(bytes(raw))


def test_truncated_data_file(small_copy):
    last = max(read_index(small_copy).values(), key=lambda e: e.offset + e.size)
    data = _data(small_copy)
    data.write_bytes(data.read_bytes()[: last.offset + last.size - 1])
    with pytest.raises(CheckpointError, match=rf"truncated data file: tensor {re.escape(repr(last.name))}") as info:
        read_checkpoint(small_copy)
    assert str(data) in str(info.value)
    others = [n for n in read_index(small_copy) if n != last.name]
    assert set(read_checkpoint(small_copy, others)) == set(others)  # the rest still reads


def test_flipped_data_byte(small_copy, reference_dir):
    name = "tnn_model/conv2/pre_0/weights_basenet"
    e = read_index(small_copy)[name]
    _flip(_data(small_copy), e.offset + e.size // 2)
    with pytest.raises(CheckpointError, match=rf"crc32c mismatch for tensor {re.escape(repr(name))}"):
        read_checkpoint(small_copy)
    # Without the check the damage goes unnoticed: only the crc32c catches it.
    got = read_checkpoint(small_copy, verify=False)
    npz = np.load(reference_dir / SMALL_MODEL / "weights.npz")
    assert not np.array_equal(got[name], npz[name])
    assert all(np.array_equal(got[n], npz[n]) for n in npz.files if n != name)


def test_flipped_index_byte(small_copy):
    _flip(_index(small_copy), 40)  # inside the (only) data block
    with pytest.raises(CheckpointError, match=r"corrupt index: data block at offset 0 fails its crc32c check"):
        read_index(small_copy)


def test_truncated_index(small_copy):
    index = _index(small_copy)
    raw = index.read_bytes()
    index.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"model\.ckpt\.index: bad magic .*truncated"):
        read_checkpoint(small_copy)
    index.write_bytes(raw[:20])
    with pytest.raises(CheckpointError, match=r"20 bytes, too short for a TensorBundle index"):
        read_checkpoint(small_copy)


def test_missing_files(small_copy):
    _data(small_copy).unlink()
    assert read_index(small_copy)  # the index alone still reads
    with pytest.raises(CheckpointError, match=r"model\.ckpt\.data-00000-of-00001: data file not found"):
        read_checkpoint(small_copy)
    _index(small_copy).unlink()
    with pytest.raises(CheckpointError, match=r"model\.ckpt\.index: index file not found"):
        read_checkpoint(small_copy)


# --------------------------------------------------------------------------------------------------
# Hand-built bundles: what the reference files do not exercise (dtypes, shards, several blocks, errors)


DTYPES = {  # TF DataType enum -> numpy
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}


def _sample(rng):
    tensors = {}
    for dt, npdt in DTYPES.items():
        shape = (3, 4, 5) if dt % 2 else (7,)
        if npdt is np.bool_:
            arr = rng.integers(0, 2, shape).astype(bool)
        elif np.issubdtype(npdt, np.integer):
            info = np.iinfo(npdt)
            arr = rng.integers(info.min, info.max, shape, dtype=npdt, endpoint=True)
        else:
            arr = rng.standard_normal(shape).astype(npdt)
        tensors[f"scope/dtype_{dt:02d}/var"] = (dt, arr)
    tensors["scope/scalar"] = (9, np.array(123456789012, dtype=np.int64))
    tensors["scope/empty"] = (1, np.zeros((0, 3), dtype=np.float32))
    return tensors


@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"num_shards": 3},
        {"big_endian": True},
        {"block_size": 4096, "restart_interval": 16},
        {"block_size": 1, "restart_interval": 1},
    ],
    ids=["small-blocks", "three-shards", "big-endian", "one-block", "one-entry-blocks"],
)
def test_hand_built_bundle_roundtrip(tmp_path, layout):
    tensors = _sample(np.random.default_rng(2))
    prefix = tmp_path / "ckpt"
    _write_bundle(prefix, tensors, **layout)
    got = read_checkpoint(prefix)
    assert list(got) == sorted(tensors)
    for name, (_, arr) in tensors.items():
        assert got[name].dtype == arr.dtype and got[name].dtype.isnative, name
        assert got[name].shape == arr.shape, name
        assert np.array_equal(got[name], arr), name
    entries = read_index(prefix)
    assert {e.shard for e in entries.values()} == set(range(layout.get("num_shards", 1)))


def test_bfloat16_widened_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 2.0**100, -0.0, np.inf], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # all exactly representable in bfloat16
    _write_bundle(tmp_path / "ckpt", {"b": (14, bits)})
    got = read_checkpoint(tmp_path / "ckpt")["b"]
    assert got.dtype == np.float32 and np.array_equal(got, values)
    assert read_index(tmp_path / "ckpt")["b"].size == 12


def test_unsupported_dtype(tmp_path):
    _write_bundle(tmp_path / "ckpt", {"ok": (1, np.ones(2, np.float32)), "words": (7, np.zeros(4, np.uint8))})
    with pytest.raises(CheckpointError, match=r"ckpt\.index: tensor 'words' has unsupported dtype string"):
        read_checkpoint(tmp_path / "ckpt")


def test_partitioned_tensor(tmp_path):
    slice_spec = _field(7, 2, _field(1, 2, _field(1, 0, 0) + _field(2, 0, 2)))
    tensors = {"part": (1, np.ones(2, np.float32)), "whole": (1, np.ones(2, np.float32))}
    _write_bundle(tmp_path / "ckpt", tensors, extras={"part": slice_spec})
    with pytest.raises(CheckpointError, match=r"tensor 'part' is partitioned"):
        read_index(tmp_path / "ckpt")


def test_compressed_block(tmp_path):
    _write_bundle(tmp_path / "ckpt", {"a": (1, np.ones(2, np.float32))}, ctype=1)
    with pytest.raises(CheckpointError, match=r"data block at offset 0 is compressed \(snappy\)"):
        read_index(tmp_path / "ckpt")


def test_size_disagrees_with_shape(tmp_path):
    blob = np.ones(3, np.float32).tobytes()
    items = [(b"", _field(1, 0, 1)), (b"t", _entry(1, (2,), 0, 0, blob))]
    _write_table(tmp_path / "ckpt.index", items)
    (tmp_path / "ckpt.data-00000-of-00001").write_bytes(blob)
    with pytest.raises(
        CheckpointError, match=r"tensor 't' of shape \(2,\) .* should take 8 bytes but its entry says 12"
    ):
        read_index(tmp_path / "ckpt")
