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


def _varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num, wire, payload):
    tag = _varint(num << 3 | wire)
    if wire == 0:
        return tag + _varint(payload)
    if wire == 2:
        return tag + _varint(len(payload)) + payload
    return tag + payload  # fixed32 / fixed64: payload already encoded


def _entry(dtype, shape, shard, offset, blob, extra=b""):
    shape_pb = b"".join(_field(2, 2, _field(1, 0, d)) for d in shape)
    crc = _mask(_crc32c_reference(blob)).to_bytes(4, "little")
    return (
        _field(1, 0, dtype)
        + _field(2, 2, shape_pb)
        + (_field(3, 0, shard) if shard else b"")
        + (_field(4, 0, offset) if offset else b"")
        + _field(5, 0, len(blob))
        + _field(6, 5, crc)
        + _field(99, 2, b"an unknown field")  # skipped by the reader
        + extra
    )


def _block(items, restart_interval):
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(prev)) and key[shared] == prev[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        prev = key
    restarts = restarts or [0]
    for r in restarts:
        out += r.to_bytes(4, "little")
    return bytes(out + len(restarts).to_bytes(4, "little"))


def _write_table(path, items, *, block_size=64, restart_interval=2, ctype=0):
    """A LevelDB table as TF's table builder writes it (one data block per ``block_size`` bytes of entries)."""
    out, index = bytearray(), []

    def emit(contents, ctype=0):
        handle = _varint(len(out)) + _varint(len(contents))
        trailer = bytes([ctype]) + _mask(_crc32c_reference(contents + bytes([ctype]))).to_bytes(4, "little")
        out.extend(contents + trailer)
        return handle

    pending = []
    for key, value in sorted(items):
        pending.append((key, value))
        if sum(len(k) + len(v) for k, v in pending) >= block_size:
            index.append((pending[-1][0], emit(_block(pending, restart_interval), ctype)))
            pending = []
    if pending:
        index.append((pending[-1][0], emit(_block(pending, restart_interval), ctype)))
    meta = emit(_block([], 1))
    idx = emit(_block(index, 1))
    footer = (meta + idx).ljust(40, b"\0") + (0xDB4775248B80FB57).to_bytes(8, "little")
    path.write_bytes(bytes(out + footer))


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


def _write_bundle(prefix, tensors, *, num_shards=1, big_endian=False, extras=None, **table):
    """``tensors``: ``{name: (tf dtype, array)}``; tensor ``i`` goes to shard ``i % num_shards``."""
    extras = extras or {}
    shards = [bytearray() for _ in range(num_shards)]
    items = [(b"", _field(1, 0, num_shards) + _field(2, 0, int(big_endian)) + _field(3, 2, _field(1, 0, 1)))]
    for i, (name, (dt, arr)) in enumerate(tensors.items()):
        shard = i % num_shards
        order = ">" if big_endian else "<"
        blob = arr.astype(arr.dtype.newbyteorder(order)).tobytes()
        value = _entry(dt, arr.shape, shard, len(shards[shard]), blob, extras.get(name, b""))
        items.append((name.encode(), value))
        shards[shard] += blob
    _write_table(prefix.parent / (prefix.name + ".index"), items, **table)
    for s, blob in enumerate(shards):
        (prefix.parent / f"{prefix.name}.data-{s:05d}-of-{num_shards:05d}").write_bytes(bytes(blob))


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
