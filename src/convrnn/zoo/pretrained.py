"""The reference's published weights in one call: download, verify, convert and cache.

:func:`fetch_weights` turns a zoo name into a converted ``.safetensors`` file in the cache, and
``create_model(name, pretrained=True)`` and ``convrnn download`` go through it:

1. ``CACHE/weights/NAME.safetensors`` exists: it is returned, and nothing touches the network. It
   only ever appears by an atomic rename after a verified conversion, so if it is there it is whole.
2. Otherwise, under a file lock (``CACHE/.locks/NAME.lock``: of several processes, one downloads and
   the others wait, then find the file of step 1), each file of the published folder
   (``WeightsInfo.files``: ``model.ckpt.index`` and ``model.ckpt.data-00000-of-00001``) is fetched
   from ``BASE/NAME/FILE`` into ``CACHE/tf/NAME/FILE.part``, resumed with an HTTP Range request where
   a part is there already (from a broken connection, in this call or an earlier one), checked
   against the server's Content-Length (and the size the zoo records, once known), then renamed.
3. The TensorBundle's own CRC32Cs (the index's blocks and every tensor) verify the files; a file that
   fails is deleted and fetched once more, then the error names it. The tensors are mapped onto the
   model and written with the converter's metadata plus the source URL, atomically.
4. The TF files are deleted unless ``keep_tf``.

The cache is ``$CONVRNN_HOME``, else ``$XDG_CACHE_HOME/convrnn``, else ``~/.cache/convrnn`` (as
``TORCH_HOME``); the base URL ``$CONVRNN_BASE_URL``, else the reference's bucket; ``CONVRNN_OFFLINE=1``
forbids the network. Every failure raises :class:`PretrainedError` (a ``ValueError``) with one line
naming the URL, file or model.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from safetensors import SafetensorError
from tqdm import tqdm

import convrnn
from convrnn.convert.checkpoint import save_converted
from convrnn.convert.tf_checkpoint import CheckpointError, read_checkpoint, read_index
from convrnn.convert.tf_names import NameMapError, tf_to_state_dict
from convrnn.model import ConvRNN
from convrnn.zoo.registry import WeightsInfo, create_model, load_weights, model_entry, published_models

__all__ = [
    "HOME_ENV",
    "OFFLINE_ENV",
    "CachedModel",
    "OfflineError",
    "PretrainedError",
    "cache_dir",
    "cached_models",
    "fetch_weights",
    "is_offline",
    "load_pretrained",
    "pretrained_weights",
    "weights_path",
]

HOME_ENV = "CONVRNN_HOME"
OFFLINE_ENV = "CONVRNN_OFFLINE"
CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per socket operation: a stalled transfer counts as a broken connection
ATTEMPTS = 5  # connections per file when the transfer breaks off (each resumes where the last stopped)
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

log = logging.getLogger("convrnn.pretrained")


class PretrainedError(ValueError):
    """Published weights cannot be fetched, verified, converted or loaded; the message names the culprit."""


class OfflineError(PretrainedError):
    """The weights are not in the cache and the network is forbidden (``--offline``, ``CONVRNN_OFFLINE``)."""


def cache_dir() -> Path:
    """The cache folder: ``$CONVRNN_HOME``, else ``$XDG_CACHE_HOME/convrnn``, else ``~/.cache/convrnn``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "convrnn"


def is_offline() -> bool:
    """Whether ``$CONVRNN_OFFLINE`` forbids the network (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pretrained_weights(name: str) -> WeightsInfo:
    """The published weights' metadata of zoo model ``name``; an error lists the names that have some."""
    weights = model_entry(name).weights
    if weights is None:
        raise PretrainedError(
            f"{name!r} has no published weights; the models with published weights are: {', '.join(published_models())}"
        )
    return weights


def weights_path(name: str, cache: str | Path | None = None) -> Path:
    """Where the converted weights of ``name`` are cached (whether or not they are there yet)."""
    return Path(cache or cache_dir()) / "weights" / f"{name}.safetensors"


def fetch_weights(
    name: str,
    model: ConvRNN | None = None,
    *,
    cache: str | Path | None = None,
    base_url: str | None = None,
    offline: bool | None = None,
    keep_tf: bool = False,
    progress: bool | None = None,
) -> Path:
    """The cached ``.safetensors`` of the published weights of ``name``, fetched and converted if need be.

    Args:
        name: a zoo name with published weights (see :func:`convrnn.zoo.published_models`).
        model: the model to convert onto (default: ``create_model(name)``, the published architecture).
        cache: the cache folder (default :func:`cache_dir`).
        base_url: where the published folders are (default ``$CONVRNN_BASE_URL``, else the reference's).
        offline: forbid the network (default ``$CONVRNN_OFFLINE``).
        keep_tf: keep the TensorFlow checkpoint files in ``CACHE/tf/NAME/`` after the conversion.
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        PretrainedError: no published weights, no network, an HTTP error, a file corrupt after a
            second fetch, a full disk, a checkpoint that does not fit ``model``; :class:`OfflineError`
            when the network would be needed but is forbidden.
    """
    info = pretrained_weights(name)
    root = Path(cache or cache_dir()).expanduser()
    target = weights_path(name, root)
    if target.is_file():
        return target
    offline = is_offline() if offline is None else offline
    tf_dir = root / "tf" / name
    if offline:
        missing = [f for f in info.files if not (tf_dir / f).is_file()]
        if missing:
            raise OfflineError(
                f"{name}: offline ({OFFLINE_ENV}=1 or --offline) and {target} is not in the cache; "
                f"it needs {info.file_url(missing[0], base_url)}"
            )
    locks = root / ".locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PretrainedError(f"cache {root}: cannot create it ({e.strerror or e})") from None
    lock = FileLock(str(locks / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another process is fetching it; waiting for it (lock %s)", name, lock.lock_file)
        lock.acquire()
    try:
        if target.is_file():  # the process that held the lock has made it
            return target
        _fetch_and_convert(name, info, model, root, tf_dir, target, base_url, offline, keep_tf, progress)
    finally:
        with contextlib.suppress(OSError):  # only if empty: after the conversion, or a failure before any byte
            tf_dir.rmdir()
        lock.release()
    return target


def load_pretrained(model: ConvRNN, name: str, *, cache: str | Path | None = None) -> ConvRNN:
    """Load the published weights of ``name`` into ``model`` (built as ``create_model(name, ...)``),
    fetching them first if the cache lacks them."""
    path = fetch_weights(name, model, cache=cache)
    try:
        load_weights(model, path)
    except ValueError as e:
        raise PretrainedError(
            f"{name}: the cached {path} does not fit this model (converted for other arguments? delete it to "
            f"convert again): {e}"
        ) from None
    if model.pretrained_cfg is not None:
        model.pretrained_cfg["weights_file"] = str(path)
    return model


# --------------------------------------------------------------------------------------------------
# Fetching and converting (under the lock).


def _fetch_and_convert(
    name: str,
    info: WeightsInfo,
    model: ConvRNN | None,
    root: Path,
    tf_dir: Path,
    target: Path,
    base_url: str | None,
    offline: bool,
    keep_tf: bool,
    progress: bool | None,
) -> None:
    urls = {f: info.file_url(f, base_url) for f in info.files}
    for d in (tf_dir, target.parent):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PretrainedError(f"cache {d}: cannot create it ({e.strerror or e})") from None
    for file, url in urls.items():
        if not (tf_dir / file).is_file():
            _download(url, tf_dir / file, info.files[file], progress)
    refetched: set[str] = set()
    while True:
        try:
            tensors = _verified_tensors(tf_dir, info)
            break
        except _Corrupt as c:
            path = tf_dir / c.file
            path.unlink(missing_ok=True)  # never leave a corrupt file where the next call would trust it
            if offline:
                raise OfflineError(
                    f"{path}: corrupt ({c.detail}); offline, so it is not fetched again from {urls[c.file]}"
                ) from None
            if c.file in refetched:
                raise PretrainedError(
                    f"{path}: still corrupt after fetching it again from {urls[c.file]} ({c.detail})"
                ) from None
            log.warning("%s: corrupt (%s); fetching it again from %s", path, c.detail, urls[c.file])
            refetched.add(c.file)
            _download(urls[c.file], path, info.files[c.file], progress)
    model = model if model is not None else create_model(name)
    try:
        state = tf_to_state_dict(model, tensors)
    except NameMapError as e:  # the TF files stay: a call with the right model converts them without a download
        raise PretrainedError(
            f"{name}: the checkpoint in {tf_dir} does not fit the model it was to be converted onto "
            f"(the published weights need the published num_classes and width): {e}"
        ) from None
    extra = {
        "source_url": info.file_url("", base_url),  # the folder the files came from
        "source_files": json.dumps({f: (tf_dir / f).stat().st_size for f in info.files}),
    }
    try:
        save_converted(state, model, target, model_name=name, source_checkpoint=_prefix(info), extra_metadata=extra)
    except (OSError, SafetensorError) as e:  # the converter leaves nothing behind on failure
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise PretrainedError(f"{target}: cannot write the converted weights ({reason})") from None
    if not keep_tf:  # the folder goes too once empty (not if a user put something else in it)
        for f in info.files:
            (tf_dir / f).unlink(missing_ok=True)


def _prefix(info: WeightsInfo) -> str:
    """The checkpoint prefix the files share (``model.ckpt``)."""
    return next(f for f in info.files if f.endswith(".index")).removesuffix(".index")


class _Corrupt(Exception):
    def __init__(self, file: str, detail: str) -> None:
        super().__init__(file, detail)
        self.file, self.detail = file, detail


def _verified_tensors(tf_dir: Path, info: WeightsInfo) -> dict:
    """Every tensor, each checked against its CRC32C; :class:`_Corrupt` names the file that fails."""
    files = list(info.files)
    index = next((f for f in files if f.endswith(".index")), files[0])
    prefix = tf_dir / _prefix(info)
    try:
        read_index(prefix)  # the index's blocks carry their own checksums
    except CheckpointError as e:
        raise _Corrupt(index, _detail(e)) from None
    try:
        return read_checkpoint(prefix)
    except CheckpointError as e:
        # The index is sound, so what failed is a data shard: the one the message names.
        shard = next((f for f in files if f != index and f in str(e)), files[-1])
        raise _Corrupt(shard, _detail(e)) from None


def _detail(e: Exception) -> str:
    return str(e).split(": ", 1)[-1]  # the reader's message starts with the path, which the caller names


def _download(url: str, dest: Path, expected: int | None, progress: bool | None) -> None:
    """Fetch ``url`` into ``dest`` through ``dest.part``, resuming it where there is one."""
    part = dest.with_name(dest.name + ".part")
    for _ in range(ATTEMPTS):
        have = part.stat().st_size if part.is_file() else 0
        try:
            if _transfer(url, part, have, expected, progress):
                part.replace(dest)
                return
        except _Broken as b:
            log.warning("%s: %s; resuming", url, b)
            reason = str(b)
        else:
            reason = "the server did not resume where the partial file ends"
    size = part.stat().st_size if part.is_file() else 0
    raise PretrainedError(
        f"{url}: the transfer broke off {ATTEMPTS} times (last: {reason}); {size:,} bytes are kept in {part}, "
        "run again to resume"
    )


class _Broken(Exception):
    """The connection ended before the file did."""


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total)`` of a ``Content-Range: bytes A-B/N`` (or ``bytes */N``) header."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not m:
        return None, None
    return (int(m[1]) if m[1] else None), (int(m[2]) if m[2] != "*" else None)


def _transfer(url: str, part: Path, have: int, expected: int | None, progress: bool | None) -> bool:
    """One request. True when ``part`` holds the whole file; False to start over; :class:`_Broken` to resume."""
    headers = {"User-Agent": f"convrnn/{convrnn.__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # nothing after byte `have`: the part may be whole already
            _, total = _content_range(e.headers.get("Content-Range"))
            if total == have and expected in (None, have):
                return True
            part.unlink()
            return False
        raise PretrainedError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        what = "cannot read it" if url.startswith("file:") else "cannot connect"
        raise PretrainedError(f"{url}: {what} ({reason})") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise _Broken(f"no response: {e or type(e).__name__}") from None
    with resp:
        status = getattr(resp, "status", None) or 200  # file:// mirrors have no status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                return False
        elif status == 200:
            have, total = 0, length  # the server sends the whole file (it ignored the Range, or none was sent)
        else:
            raise PretrainedError(f"{url}: unexpected HTTP status {status}")
        if expected is not None and total is not None and total != expected:
            raise PretrainedError(f"{url}: the server announces {total:,} bytes, the zoo expects {expected:,}")
        total = total if total is not None else expected
        _check_space(part, have, total)
        return _copy(resp, url, part, have, total, progress)


def _check_space(part: Path, have: int, total: int | None) -> None:
    if total is None:
        return
    free = shutil.disk_usage(part.parent).free
    if free < total - have:
        part.unlink(missing_ok=True)
        raise PretrainedError(
            f"{part.with_suffix('')}: not enough space in {part.parent} ({total - have:,} bytes needed, {free:,} free)"
        )


def _copy(resp: Any, url: str, part: Path, have: int, total: int | None, progress: bool | None) -> bool:
    got = have
    label = f"{part.parent.name}/{part.name.removesuffix('.part')}"
    bar = tqdm(
        total=total,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=None if progress is None else not progress,  # None: only on a terminal
        leave=False,
    )
    with bar:
        try:
            out = part.open("ab" if have else "wb")
        except OSError as e:
            raise PretrainedError(f"{part}: cannot write it ({e.strerror or e})") from None
        with out:
            while total is None or got < total:
                try:
                    chunk = resp.read(CHUNK)
                except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
                    raise _Broken(f"{e or type(e).__name__} after {got:,} of {_of(total)} bytes") from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as e:
                    _drop(out, part)
                    if e.errno in NO_SPACE:
                        raise PretrainedError(
                            f"{part.with_suffix('')}: no space left in {part.parent} after {got:,} of "
                            f"{_of(total)} bytes; the partial file was removed"
                        ) from None
                    raise PretrainedError(f"{part}: cannot write it ({e.strerror or e})") from None
                got += len(chunk)
                bar.update(len(chunk))
            try:
                out.flush()
                os.fsync(out.fileno())  # the rename that follows must not publish a file still in the page cache only
            except OSError as e:
                _drop(out, part)
                raise PretrainedError(f"{part.with_suffix('')}: cannot write it ({e.strerror or e})") from None
    if total is not None and got < total:
        raise _Broken(f"connection closed after {got:,} of {total:,} bytes")
    if total is not None and got > total:
        part.unlink()
        raise PretrainedError(f"{url}: the server sent {got:,} bytes but announced {total:,}")
    return True


def _drop(out: Any, part: Path) -> None:
    """Close and delete a partial file that could not be written (a full disk): nothing half-written stays."""
    with contextlib.suppress(OSError):  # flushing what is left fails the same way
        out.close()
    part.unlink(missing_ok=True)


def _of(total: int | None) -> str:
    return f"{total:,}" if total is not None else "?"


# --------------------------------------------------------------------------------------------------
# What the cache holds.


@dataclass
class CachedModel:
    """One model in the cache: its converted weights and any TF files (kept, or partial downloads)."""

    name: str
    weights: Path | None
    tf_files: list[Path]

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in [*([self.weights] if self.weights else []), *self.tf_files])


def cached_models(cache: str | Path | None = None) -> list[CachedModel]:
    """Everything in the cache, by model name."""
    root = Path(cache or cache_dir()).expanduser()
    names = {p.stem for p in (root / "weights").glob("*.safetensors")}
    names |= {p.name for p in (root / "tf").glob("*") if p.is_dir() and any(p.iterdir())}
    out = []
    for n in sorted(names):
        w = weights_path(n, root)
        tf = sorted(p for p in (root / "tf" / n).glob("*") if p.is_file()) if (root / "tf" / n).is_dir() else []
        out.append(CachedModel(n, w if w.is_file() else None, tf))
    return out
