"""A TensorBundle (TF Saver V2) writer for tests: hand-built checkpoints, and reference ones rewritten.

Written from the format's description (see :mod:`convrnn.convert.tf_checkpoint`), independently of
the reader: by default every checksum is computed with the plain byte-at-a-time CRC32C loop.
"""

from collections.abc import Callable

import numpy as np

from convrnn.convert.tf_checkpoint import _crc32c_reference, _mask


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


def _entry(dtype, shape, shard, offset, blob, extra=b"", crc_fn=None):
    shape_pb = b"".join(_field(2, 2, _field(1, 0, d)) for d in shape)
    crc = _mask((crc_fn or _crc32c_reference)(blob)).to_bytes(4, "little")
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


def _write_bundle(prefix, tensors, *, num_shards=1, big_endian=False, extras=None, crc=None, **table):
    """``tensors``: ``{name: (tf dtype, array)}``; tensor ``i`` goes to shard ``i % num_shards``."""
    extras = extras or {}
    shards = [bytearray() for _ in range(num_shards)]
    items = [(b"", _field(1, 0, num_shards) + _field(2, 0, int(big_endian)) + _field(3, 2, _field(1, 0, 1)))]
    for i, (name, (dt, arr)) in enumerate(tensors.items()):
        shard = i % num_shards
        order = ">" if big_endian else "<"
        blob = arr.astype(arr.dtype.newbyteorder(order)).tobytes()
        value = _entry(dt, arr.shape, shard, len(shards[shard]), blob, extras.get(name, b""), crc)
        items.append((name.encode(), value))
        shards[shard] += blob
    _write_table(prefix.parent / (prefix.name + ".index"), items, **table)
    for s, blob in enumerate(shards):
        (prefix.parent / f"{prefix.name}.data-{s:05d}-of-{num_shards:05d}").write_bytes(bytes(blob))


def write_checkpoint(prefix, arrays: dict[str, np.ndarray], crc: Callable[[bytes], int] | None = None) -> None:
    """A float32/int64 checkpoint of ``arrays`` (name -> array) at ``prefix``, as TensorFlow lays one out.

    ``crc``: the CRC32C function for the data (default: the byte loop; pass the reader's vectorised
    ``crc32c`` for megabytes of weights).
    """
    codes = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.int64): 9}
    _write_bundle(prefix, {name: (codes[np.asarray(a).dtype], np.asarray(a)) for name, a in arrays.items()}, crc=crc)
