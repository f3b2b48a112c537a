"""Read TensorFlow "TensorBundle" (Saver V2) checkpoints with NumPy alone: no TensorFlow, no protobuf.

A checkpoint ``PREFIX`` is two kinds of file:

- ``PREFIX.index``: a LevelDB-format SSTable. Its keys are the tensor names, sorted; the empty key ``""``
  holds a ``BundleHeaderProto`` (number of shards, endianness, version), every other key a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked crc32c of the tensor's bytes).
- ``PREFIX.data-SSSSS-of-NNNNN``: the shards, each the tensors' raw bytes (C order) back to back.

The SSTable layout (``table/format.cc`` in LevelDB, ``tensorflow/core/lib/io/format.cc`` in TF): data blocks
of prefix-compressed entries ``varint shared, varint non_shared, varint value_len, key delta, value``
followed by ``uint32`` restart offsets and their count; each block is followed by a 5-byte trailer
(compression type, masked crc32c of the contents and that type byte); an index block maps the last key
of each data block to its ``BlockHandle`` (varint offset, varint size); a 48-byte footer holds the
metaindex and index handles, zero padding to 40 bytes and the magic ``0xdb4775248b80fb57``.

Every block's checksum is checked, and (unless ``verify=False``) every tensor's: a checkpoint that was
cut short or damaged raises :class:`CheckpointError` rather than giving wrong weights. CRC32C is computed
by a NumPy routine that runs the table-driven loop over many chunks at once (several hundred MB/s), so
verifying a checkpoint of hundreds of MB takes about a second.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CheckpointError", "TensorEntry", "crc32c", "read_checkpoint", "read_index"]


class CheckpointError(ValueError):
    """A TensorBundle checkpoint is missing, damaged, or uses a feature this reader does not handle."""


# --------------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF.

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8


def _make_tables() -> tuple[list[int], np.ndarray, np.ndarray]:
    byte = np.arange(256, dtype=np.uint32)
    t1 = byte.copy()
    for _ in range(8):
        t1 = np.where(t1 & 1, (t1 >> 1) ^ np.uint32(_POLY), t1 >> 1).astype(np.uint32)
    # tk[b]: the register after byte b then k - 1 zero bytes (starting from 0): the slice-by-4 tables.
    tables = [t1]
    for _ in range(3):
        prev = tables[-1]
        tables.append((prev >> np.uint32(8)) ^ t1[prev & np.uint32(0xFF)])
    t1, t2, t3, t4 = tables
    v = np.arange(65536, dtype=np.uint32)
    # A little-endian word x = b0 | b1 << 8 | b2 << 16 | b3 << 24 moves the register to
    # t4[b0] ^ t3[b1] ^ t2[b2] ^ t1[b3]; fold pairs of bytes into two 64K-entry tables.
    lo16 = t4[v & 0xFF] ^ t3[v >> 8]
    hi16 = t2[v & 0xFF] ^ t1[v >> 8]
    return [int(x) for x in t1], lo16, hi16


_TABLE, _LO16, _HI16 = _make_tables()


def _crc32c_reference(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C one byte at a time: the plain table-driven loop (slow; for tests and short tails)."""
    reg = crc ^ 0xFFFFFFFF
    table = _TABLE
    for b in bytes(data):
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


def _gf2_apply(cols: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply the GF(2) 32x32 matrix with columns ``cols`` (``cols[i]`` = image of bit ``i``) to each of ``x``."""
    x = np.asarray(x, dtype=np.uint32)
    out = np.zeros(x.shape, dtype=np.uint32)
    for i in range(32):
        out ^= cols[i] & (np.uint32(0) - ((x >> np.uint32(i)) & np.uint32(1)))
    return out


@functools.lru_cache(maxsize=64)
def _zeros_operator(nbytes: int) -> np.ndarray:
    """Columns of the matrix that advances a CRC register over ``nbytes`` zero bytes (as zlib's crc32_combine)."""
    bit = np.uint32(1) << np.arange(32, dtype=np.uint32)
    one = bit.copy()  # one zero *bit*: shift right, xor in the polynomial when the dropped bit was set
    one = np.where(one & 1, (one >> 1) ^ np.uint32(_POLY), one >> 1).astype(np.uint32)
    op = one
    for _ in range(3):  # 1 -> 2 -> 4 -> 8 bits: one zero byte
        op = _gf2_apply(op, op)
    result = bit  # identity
    while nbytes:
        if nbytes & 1:
            result = _gf2_apply(op, result)
        nbytes >>= 1
        if nbytes:
            op = _gf2_apply(op, op)
    return result


@functools.lru_cache(maxsize=64)
def _zeros_tables(nbytes: int) -> tuple[np.ndarray, ...]:
    """The zero-bytes operator as four 256-entry tables, one per byte of the register."""
    cols = _zeros_operator(nbytes)
    byte = np.arange(256, dtype=np.uint32)
    return tuple(_gf2_apply(cols, byte << np.uint32(8 * j)) for j in range(4))


def _shift(regs: np.ndarray, nbytes: int) -> np.ndarray:
    """Advance each register in ``regs`` over ``nbytes`` zero bytes."""
    t0, t1, t2, t3 = _zeros_tables(nbytes)
    return t0[regs & 0xFF] ^ t1[(regs >> 8) & 0xFF] ^ t2[(regs >> 16) & 0xFF] ^ t3[regs >> 24]


def _chunked_register(words: np.ndarray, reg: int) -> int:
    """Register after the bytes of ``words`` (shape ``(L/4, K)``: column ``k`` is chunk ``k``, in order).

    All K chunks run the slice-by-4 loop at once, one NumPy op per step; chunk 0 starts from ``reg``, the
    others from 0, and since the CRC register is linear the chunks then combine by advancing each over the
    bytes that follow it: pairwise, in a tree (K is a power of two, so every level uses one operator).
    """
    n_rows, k = words.shape
    c = np.zeros(k, dtype=np.uint32)
    c[0] = reg
    hi = np.empty(k, dtype=np.intp)
    lo = np.empty(k, dtype=np.intp)
    tmp = np.empty(k, dtype=np.uint32)
    for row in words:
        np.bitwise_xor(c, row, out=c)
        np.right_shift(c, 16, out=hi)
        np.bitwise_and(c, 0xFFFF, out=lo)
        np.take(_HI16, hi, out=tmp, mode="wrap")
        np.take(_LO16, lo, out=c, mode="wrap")
        np.bitwise_xor(c, tmp, out=c)
    length = 4 * n_rows
    while len(c) > 1:
        c = _shift(c[0::2], length) ^ c[1::2]
        length *= 2
    return int(c[0])


def _crc32c_numpy(
    data: np.ndarray, crc: int = 0, *, segment: int = 1 << 22, max_chunks: int = 1 << 16, min_chunk: int = 64
) -> int:
    """CRC32C of a 1-D ``uint8`` array, vectorised over chunks.

    The data is taken ``segment`` bytes at a time; each segment is split into K (a power of two, at most
    ``max_chunks``) chunks of L bytes (a multiple of 4, at least ``min_chunk``), transposed so that one step
    reads one contiguous row, and run through :func:`_chunked_register`. What is left over (fewer than
    4 * K bytes) goes round again with fewer chunks; the last few hundred bytes run the plain byte loop.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    reg = (crc ^ 0xFFFFFFFF) & 0xFFFFFFFF
    pos, n = 0, len(data)
    min_chunk = max(4, min_chunk - min_chunk % 4)
    while n - pos >= 2 * min_chunk:
        seg = min(segment, n - pos)
        k = 1 << (min(seg // min_chunk, max_chunks).bit_length() - 1) if seg >= min_chunk else 0
        if k < 2:
            break
        chunk = seg // k // 4 * 4
        words = data[pos : pos + k * chunk].view("<u4").reshape(k, chunk // 4).T.copy()
        reg = _chunked_register(words, reg)
        pos += k * chunk
    table = _TABLE
    for b in data[pos:].tobytes():
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


def _as_bytes_array(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    view = memoryview(data)
    if not view.contiguous:
        view = memoryview(view.tobytes())
    return np.frombuffer(view.cast("B"), dtype=np.uint8)


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``'s bytes, continuing from ``crc`` (as ``zlib.crc32`` does).

    ``crc32c(b, crc32c(a)) == crc32c(a + b)``. Arrays are taken as their raw bytes in C order.
    """
    return _crc32c_numpy(_as_bytes_array(data), crc)


def _mask(crc: int) -> int:
    """The masked CRC that LevelDB and TensorFlow store."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# Protobuf wire format (just what the bundle protos need).


class _ProtoError(Exception):
    pass


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise _ProtoError("varint runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _ProtoError("varint longer than 10 bytes")


def _proto_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` for each field: ints for varint/fixed, bytes for length-delimited."""
    pos, n = 0, len(buf)
    while pos < n:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise _ProtoError("fixed64 runs past the end")
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise _ProtoError("length-delimited field runs past the end")
            value = bytes(buf[pos : pos + length])
            pos += length
        elif wire == 5:
            if pos + 4 > n:
                raise _ProtoError("fixed32 runs past the end")
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# --------------------------------------------------------------------------------------------------
# The SSTable.

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_TRAILER = 5


def _block_handle(buf: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _read_block(raw: bytes, offset: int, size: int, path: Path, what: str) -> memoryview:
    end = offset + size
    if end + _TRAILER > len(raw) - _FOOTER:
        raise CheckpointError(
            f"{path}: {what} at offset {offset} (size {size}) runs past the end of the index file (truncated?)"
        )
    ctype = raw[end]
    stored = int.from_bytes(raw[end + 1 : end + _TRAILER], "little")
    actual = _mask(crc32c(memoryview(raw)[offset : end + 1]))
    if stored != actual:
        raise CheckpointError(
            f"{path}: corrupt index: {what} at offset {offset} fails its crc32c check "
            f"(stored {stored:#010x}, computed {actual:#010x})"
        )
    if ctype != 0:
        kind = {1: "snappy", 2: "zlib"}.get(ctype, f"type {ctype}")
        raise CheckpointError(
            f"{path}: {what} at offset {offset} is compressed ({kind}); only uncompressed is supported"
        )
    return memoryview(raw)[offset:end]


def _block_entries(block: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """``(key, value)`` of each entry of a block, keys undone from their shared prefixes."""
    if len(block) < 4:
        raise _ProtoError("block shorter than its restart count")
    n_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise _ProtoError(f"block claims {n_restarts} restart points, more than fit")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise _ProtoError("entry runs past the end of its block")
        key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _table_items(path: Path) -> Iterator[tuple[bytes, memoryview]]:
    """Every ``(key, value)`` of the SSTable at ``path``, in key order, with every block's crc checked."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: index file not found") from None
    if len(raw) < _FOOTER:
        raise CheckpointError(f"{path}: {len(raw)} bytes, too short for a TensorBundle index (truncated?)")
    magic = int.from_bytes(raw[-8:], "little")
    if magic != _MAGIC:
        raise CheckpointError(f"{path}: bad magic {magic:#018x}: not a TensorBundle index, or truncated")
    footer = memoryview(raw)[-_FOOTER:]
    try:
        _meta_off, _meta_size, pos = _block_handle(footer, 0)
        index_off, index_size, _ = _block_handle(footer, pos)
        index = _read_block(raw, index_off, index_size, path, "index block")
        for _, handle in _block_entries(index):
            offset, size, _ = _block_handle(handle, 0)
            yield from _block_entries(_read_block(raw, offset, size, path, "data block"))
    except _ProtoError as e:
        raise CheckpointError(f"{path}: corrupt index: {e}") from None


# --------------------------------------------------------------------------------------------------
# The bundle.

# TF DataType enum -> NumPy dtype (little-endian on disk unless the header says otherwise).
_DTYPES: dict[int, str] = {
    1: "f4",  # DT_FLOAT
    2: "f8",  # DT_DOUBLE
    3: "i4",  # DT_INT32
    4: "u1",  # DT_UINT8
    5: "i2",  # DT_INT16
    6: "i1",  # DT_INT8
    9: "i8",  # DT_INT64
    10: "?",  # DT_BOOL
    14: "u2",  # DT_BFLOAT16: read as its bits, then widened exactly to float32
    17: "u2",  # DT_UINT16
    19: "f2",  # DT_HALF
    22: "u4",  # DT_UINT32
    23: "u8",  # DT_UINT64
}
_DT_BFLOAT16 = 14
_DT_NAMES = {
    7: "string",
    8: "complex64",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
    18: "complex128",
    20: "resource",
    21: "variant",
}


@dataclass
class TensorEntry:
    """Where one tensor lies in a checkpoint's data shards.

    ``dtype`` is the dtype :func:`read_checkpoint` returns (``bfloat16`` is widened to ``float32``);
    ``size`` is the number of bytes on disk, ``crc32c`` their masked CRC32C as TensorFlow stores it.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int
    tf_dtype: int = 1


def _split_prefix(prefix: str | os.PathLike[str]) -> Path:
    text = os.fspath(prefix)
    if text.endswith(".index"):
        return Path(text[: -len(".index")])
    m = re.search(r"\.data-\d{5}-of-\d{5}$", text)
    return Path(text[: m.start()]) if m else Path(text)


def _parse_header(value: memoryview, path: Path) -> tuple[int, bool]:
    num_shards, big_endian = 1, False
    for field, wire, v in _proto_fields(value):
        if field == 1 and wire == 0:
            num_shards = int(v)
        elif field == 2 and wire == 0:
            if v not in (0, 1):
                raise CheckpointError(f"{path}: bundle header has unknown endianness {v}")
            big_endian = v == 1
    if num_shards < 1:
        raise CheckpointError(f"{path}: bundle header has num_shards={num_shards}")
    return num_shards, big_endian


def _parse_shape(buf: bytes, path: Path, name: str) -> tuple[int, ...]:
    dims: list[int] = []
    for field, wire, v in _proto_fields(buf):
        if field == 2 and wire == 2:
            size = 0
            for f2, w2, v2 in _proto_fields(v):
                if f2 == 1 and w2 == 0:
                    size = _signed64(int(v2))
            if size < 0:
                raise CheckpointError(f"{path}: tensor {name!r} has an unknown dimension ({size})")
            dims.append(size)
        elif field == 3 and wire == 0 and v:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown rank")
    return tuple(dims)


def _parse_entry(name: str, value: memoryview, path: Path, big_endian: bool) -> TensorEntry:
    dt, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, 0, False
    for field, wire, v in _proto_fields(value):
        if field == 1 and wire == 0:
            dt = int(v)
        elif field == 2 and wire == 2:
            shape = _parse_shape(v, path, name)
        elif field == 3 and wire == 0:
            shard = _signed64(int(v))
        elif field == 4 and wire == 0:
            offset = _signed64(int(v))
        elif field == 5 and wire == 0:
            size = _signed64(int(v))
        elif field == 6 and wire == 5:
            crc = int(v)
        elif field == 7:
            sliced = True
    if sliced:
        raise CheckpointError(
            f"{path}: tensor {name!r} is partitioned (saved in slices); partitioned variables are not supported"
        )
    if dt not in _DTYPES:
        kind = _DT_NAMES.get(dt, f"DataType enum {dt}")
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {kind}")
    disk = np.dtype(_DTYPES[dt]).newbyteorder(">" if big_endian else "<")
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if size != numel * disk.itemsize:
        raise CheckpointError(
            f"{path}: tensor {name!r} of shape {shape} and dtype {disk.name} should take "
            f"{numel * disk.itemsize} bytes but its entry says {size}"
        )
    if offset < 0 or shard < 0:
        raise CheckpointError(f"{path}: tensor {name!r} has a negative offset or shard")
    out = np.dtype(np.float32) if dt == _DT_BFLOAT16 else disk.newbyteorder("=")
    return TensorEntry(name, out, shape, shard, offset, size, crc, dt)


def _read_bundle(prefix: str | os.PathLike[str]) -> tuple[Path, int, bool, dict[str, TensorEntry]]:
    base = _split_prefix(prefix)
    path = Path(f"{base}.index")
    header: tuple[int, bool] | None = None
    entries: dict[str, TensorEntry] = {}
    try:
        for key, value in _table_items(path):
            if key == b"":
                header = _parse_header(value, path)
                continue
            if header is None:
                raise CheckpointError(f"{path}: no bundle header (the empty key) before the tensor entries")
            name = key.decode("utf-8", "backslashreplace")
            entries[name] = _parse_entry(name, value, path, header[1])
    except _ProtoError as e:
        raise CheckpointError(f"{path}: corrupt index: {e}") from None
    if header is None:
        raise CheckpointError(f"{path}: no bundle header (the empty key): not a TensorBundle index")
    num_shards, big_endian = header
    for e in entries.values():
        if e.shard >= num_shards:
            raise CheckpointError(f"{path}: tensor {e.name!r} is in shard {e.shard} of only {num_shards}")
    return base, num_shards, big_endian, entries


def read_index(prefix: str | os.PathLike[str]) -> dict[str, TensorEntry]:
    """The tensors of the checkpoint ``prefix`` (path without ``.index``; a path ending in ``.index`` works
    too), by name in the index's (sorted) order. Reads only the ``.index`` file.

    Raises :class:`CheckpointError` if the index is missing, truncated or corrupt, or holds a tensor this
    reader cannot return (partitioned variables; string, complex, quantized, resource or variant dtypes).
    """
    return _read_bundle(prefix)[3]


def _shard_path(base: Path, shard: int, num_shards: int) -> Path:
    return Path(f"{base}.data-{shard:05d}-of-{num_shards:05d}")


def read_checkpoint(
    prefix: str | os.PathLike[str], names: Iterable[str] | None = None, *, verify: bool = True
) -> dict[str, np.ndarray]:
    """Read tensors of a TensorBundle checkpoint as NumPy arrays in TensorFlow's layouts.

    Args:
        prefix: the checkpoint prefix (e.g. ``.../model.ckpt``); a path ending in ``.index`` or in
            ``.data-00000-of-00001`` works too.
        names: the tensors to read (default: all, e.g. weights, optimizer slots and ``global_step``).
        verify: check each tensor's bytes against the CRC32C stored in the index.

    Returns:
        ``{name: array}`` in the order of ``names`` (or of the index). Each array is a fresh native-endian
        C-order copy; only the byte ranges of the requested tensors are read from the data shards.

    Raises:
        CheckpointError: missing or damaged files, unknown names, checksum mismatches, unsupported tensors.
    """
    base, num_shards, big_endian, entries = _read_bundle(prefix)
    wanted = list(entries) if names is None else list(dict.fromkeys(names))
    missing = [n for n in wanted if n not in entries]
    if missing:
        raise CheckpointError(f"{base}.index: no tensor named {', '.join(map(repr, missing))} in the checkpoint")
    by_shard: dict[int, list[TensorEntry]] = {}
    for n in wanted:
        by_shard.setdefault(entries[n].shard, []).append(entries[n])
    out: dict[str, np.ndarray] = {}
    for shard, items in sorted(by_shard.items()):
        path = _shard_path(base, shard, num_shards)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise CheckpointError(f"{path}: data file not found (needed for tensor {items[0].name!r})") from None
        with f:
            file_size = os.fstat(f.fileno()).st_size
            for e in sorted(items, key=lambda e: e.offset):
                if e.offset + e.size > file_size:
                    raise CheckpointError(
                        f"{path}: truncated data file: tensor {e.name!r} needs bytes [{e.offset}, "
                        f"{e.offset + e.size}) but the file has {file_size}"
                    )
                disk = np.dtype(_DTYPES[e.tf_dtype]).newbyteorder(">" if big_endian else "<")
                buf = np.empty(e.size // disk.itemsize, dtype=disk)
                raw = buf.view(np.uint8)
                f.seek(e.offset)
                got = f.readinto(memoryview(raw)) if e.size else 0
                if got != e.size:
                    raise CheckpointError(f"{path}: truncated data file: short read for tensor {e.name!r}")
                if verify:
                    actual = _mask(crc32c(raw))
                    if actual != e.crc32c:
                        raise CheckpointError(
                            f"{path}: crc32c mismatch for tensor {e.name!r} (stored {e.crc32c:#010x}, "
                            f"computed {actual:#010x}): the data file is corrupt"
                        )
                if e.tf_dtype == _DT_BFLOAT16:
                    arr = (buf.astype(np.uint32) << np.uint32(16)).view(np.float32)
                else:
                    arr = buf.astype(e.dtype, copy=False)
                out[e.name] = arr.reshape(e.shape)
    return {n: out[n] for n in wanted}
