"""Published weights in one call: download, resume, verify, convert, cache, over a local HTTP server.

The server publishes the shared reduced-width reference checkpoints under the reference's layout
(``BASE/<model>/model.ckpt.*``); nothing here touches the internet.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import convrnn
from convrnn.cli import main
from convrnn.zoo.pretrained import OfflineError, PretrainedError, fetch_weights

NAME = "timedecay_shallow"  # the smallest reference checkpoint (150 kB)
INDEX = f"{NAME}/model.ckpt.index"
DATA = f"{NAME}/model.ckpt.data-00000-of-00001"


def _overrides(reference_dir: Path, name: str = NAME) -> dict:
    """The reference data's reduced model: width / 8, its classes and image size."""
    meta = json.loads((reference_dir / name / "meta.json").read_text())
    return {"num_classes": meta["num_classes"], "image_size": meta["image_size"], "width": 1 / 8}


def _assert_reference_logits(model: convrnn.ConvRNN, reference_dir: Path, name: str = NAME) -> None:
    x = torch.from_numpy(np.load(reference_dir / name / "input_normalized.npy")).permute(0, 3, 1, 2)
    ref = np.load(reference_dir / name / "logits_all_times.npy")
    with torch.no_grad():
        logits = model.eval()(x, times=ref.shape[0]).logits.numpy()
    assert np.abs(logits - ref).max() <= 1e-4


def _files(root: Path) -> list[str]:
    """Every file in the cache but the lock files, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent.name != ".locks")


def test_pretrained_model_from_the_server_then_from_the_cache(reference_dir, server, cache, monkeypatch):
    kw = _overrides(reference_dir)
    model = convrnn.create_model(NAME, pretrained=True, **kw)
    _assert_reference_logits(model, reference_dir)
    target = cache / "weights" / f"{NAME}.safetensors"
    assert model.pretrained_cfg["weights_file"] == str(target)
    # The TF files are gone after the verified conversion; nothing else was left behind.
    assert _files(cache) == [f"weights/{NAME}.safetensors"]
    assert server.gets(INDEX) == [None] and server.gets(DATA) == [None]
    with safe_open(str(target), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == NAME and meta["source_url"] == f"{server.url}/{NAME}/"
    assert json.loads(meta["source_files"]) == {
        "model.ckpt.index": (reference_dir / INDEX).stat().st_size,
        "model.ckpt.data-00000-of-00001": (reference_dir / DATA).stat().st_size,
    }
    # Later calls read the cache only, even with the network forbidden and the server gone.
    server.httpd.shutdown()
    monkeypatch.setenv("CONVRNN_OFFLINE", "1")
    again = convrnn.create_model(NAME, pretrained=True, **kw)
    _assert_reference_logits(again, reference_dir)
    assert len(server.requests) == 2


def test_resume_after_a_cut_connection_and_from_an_earlier_run(reference_dir, server, cache):
    model = convrnn.create_model(NAME, **_overrides(reference_dir))
    server.cut[DATA] = 50_000
    fetch_weights(NAME, model, keep_tf=True)
    assert server.gets(DATA) == [None, "bytes=50000-"]
    tf = cache / "tf" / NAME
    assert (tf / "model.ckpt.data-00000-of-00001").read_bytes() == (reference_dir / DATA).read_bytes()
    assert sorted(p.name for p in tf.iterdir()) == ["model.ckpt.data-00000-of-00001", "model.ckpt.index"]

    # An earlier run left a whole index (the server answers 416) and the first 1000 bytes of the data.
    (cache / "weights" / f"{NAME}.safetensors").unlink()
    (tf / "model.ckpt.index").rename(tf / "model.ckpt.index.part")
    (tf / "model.ckpt.data-00000-of-00001.part").write_bytes((reference_dir / DATA).read_bytes()[:1000])
    (tf / "model.ckpt.data-00000-of-00001").unlink()
    index_size = (reference_dir / INDEX).stat().st_size
    server.requests.clear()
    path = fetch_weights(NAME, model)
    assert server.gets(INDEX) == [f"bytes={index_size}-"] and server.gets(DATA) == ["bytes=1000-"]
    convrnn.load_weights(model, path)
    _assert_reference_logits(model, reference_dir)
    assert _files(cache) == [f"weights/{NAME}.safetensors"]


def test_a_corrupt_byte_is_fetched_again_once_then_named(reference_dir, server, cache, caplog):
    model = convrnn.create_model(NAME, **_overrides(reference_dir))
    server.corrupt[DATA] = 1
    with caplog.at_level(logging.WARNING, logger="convrnn.pretrained"):
        path = fetch_weights(NAME, model)
    assert server.gets(DATA) == [None, None]  # the second fetch starts over
    assert "crc32c mismatch" in caplog.text and "fetching it again" in caplog.text
    convrnn.load_weights(model, path)
    _assert_reference_logits(model, reference_dir)

    # Corrupt every time: one line naming the file and its URL; nothing corrupt or partial is kept.
    path.unlink()
    server.requests.clear()
    server.corrupt[DATA] = 99
    data = cache / "tf" / DATA
    with pytest.raises(PretrainedError) as e:
        fetch_weights(NAME, model)
    msg = str(e.value)
    assert msg.startswith(f"{data}: still corrupt after fetching it again from {server.url}/{DATA} (")
    assert "\n" not in msg
    assert server.gets(DATA) == [None, None]
    assert _files(cache) == [f"tf/{INDEX}"]  # the index is whole and verified: kept for the next try


def test_a_mirror_on_a_shared_file_system(reference_dir, cache):
    path = fetch_weights(NAME, convrnn.create_model(NAME, **_overrides(reference_dir)), base_url=reference_dir.as_uri())
    _assert_reference_logits(convrnn.create_model(NAME, weights=path, **_overrides(reference_dir)), reference_dir)
    with pytest.raises(
        PretrainedError, match=r"^file://.*/mirror/gru_shallow/model.ckpt.index: cannot read it \(No such file"
    ):
        fetch_weights("gru_shallow", base_url=(reference_dir / "mirror").as_uri())


def test_two_processes_one_downloads_the_other_waits(reference_dir, server, cache, tmp_path):
    kw = _overrides(reference_dir)
    barrier, logs = tmp_path / "barrier", [tmp_path / "err0.txt", tmp_path / "err1.txt"]
    barrier.mkdir()
    script = f"""
import logging, sys, time
from pathlib import Path
import convrnn
from convrnn.zoo.pretrained import fetch_weights
logging.basicConfig(level=logging.INFO, format="%(message)s")
model = convrnn.create_model({NAME!r}, **{kw!r})
Path({str(barrier)!r}, sys.argv[1]).touch()
while len(list(Path({str(barrier)!r}).iterdir())) < 2:  # start fetching together
    time.sleep(0.005)
print(fetch_weights({NAME!r}, model))
"""
    # The data file is served only once the other process says it waits: the two really overlap.
    server.hold[DATA] = lambda: any("waiting" in p.read_text() for p in logs if p.exists())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, stderr=err, text=True, env=env
                )
            )
    outs = [p.communicate(timeout=120)[0] for p in procs]
    errs = [p.read_text() for p in logs]
    assert [p.returncode for p in procs] == [0, 0], errs
    target = cache / "weights" / f"{NAME}.safetensors"
    assert [o.strip() for o in outs] == [str(target)] * 2
    assert sum("another process is fetching it" in e for e in errs) == 1
    assert server.gets(INDEX) == [None] and server.gets(DATA) == [None]
    _assert_reference_logits(convrnn.create_model(NAME, weights=target, **kw), reference_dir)
    assert _files(cache) == [f"weights/{NAME}.safetensors"]


def test_offline_and_network_errors_name_the_culprit(reference_dir, server, cache, monkeypatch):
    kw = _overrides(reference_dir)
    target = cache / "weights" / f"{NAME}.safetensors"
    with pytest.raises(OfflineError, match=rf"offline .* {target} is not in the cache; it needs {server.url}/{INDEX}$"):
        fetch_weights(NAME, offline=True)
    monkeypatch.setenv("CONVRNN_OFFLINE", "1")
    with pytest.raises(OfflineError, match=rf"it needs {server.url}/{INDEX}$"):
        convrnn.create_model(NAME, pretrained=True, **kw)
    monkeypatch.delenv("CONVRNN_OFFLINE")
    assert server.requests == []

    # A mirror without the model: 404, naming the URL.
    with pytest.raises(PretrainedError, match=rf"^{server.url}/mirror/{NAME}/model.ckpt.index: HTTP 404"):
        fetch_weights(NAME, base_url=f"{server.url}/mirror")
    # Nobody listening.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(
        PretrainedError, match=rf"^{closed}/{NAME}/model.ckpt.index: cannot connect \(Connection refused\)$"
    ):
        fetch_weights(NAME, base_url=closed)
    # No published weights: the names that have some.
    with pytest.raises(PretrainedError, match=r"'ff_shallow' has no published weights; .*: gru_intermediate, "):
        convrnn.create_model("ff_shallow", pretrained=True)
    with pytest.raises(TypeError, match="not both"):
        convrnn.create_model(NAME, pretrained=True, weights=target)
    # Weights converted for another architecture: the cached file is named, with what to do.
    fetch_weights(NAME, convrnn.create_model(NAME, **kw))
    with pytest.raises(PretrainedError, match=rf"the cached {target} does not fit this model .* shapes differ"):
        convrnn.create_model(NAME, pretrained=True, num_classes=10, image_size=160, width=0.25)
    # The checkpoint itself does not fit the model asked for: named, and the TF files stay for the next try.
    with pytest.raises(
        PretrainedError, match=rf"^gru_shallow: the checkpoint in {cache}/tf/gru_shallow does not fit .* shape"
    ):
        convrnn.create_model("gru_shallow", pretrained=True, num_classes=10, image_size=160, width=0.25)
    assert not (cache / "weights" / "gru_shallow.safetensors").exists()
    assert sorted(p.name for p in (cache / "tf" / "gru_shallow").iterdir()) == [
        "model.ckpt.data-00000-of-00001",
        "model.ckpt.index",
    ]
    server.requests.clear()
    convrnn.create_model("gru_shallow", pretrained=True, **_overrides(reference_dir, "gru_shallow"))
    assert server.requests == []
    assert not list(cache.rglob("*.part")) and not list(cache.rglob(".*.tmp"))


def test_a_full_disk_leaves_nothing_half_written(reference_dir, server, cache):
    model = convrnn.create_model(NAME, **_overrides(reference_dir))
    # A file-size limit makes writes past 20 kB fail as a full disk would (EFBIG rather than ENOSPC).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        with pytest.raises(PretrainedError) as e:
            fetch_weights(NAME, model)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    data = cache / "tf" / DATA
    assert str(e.value).startswith(f"{data}: no space left in {data.parent} after ")
    assert str(e.value).endswith("the partial file was removed")
    assert _files(cache) == [f"tf/{INDEX}"]  # the whole index only: no partial data, no weights


def test_download_command(reference_dir, server, cache, capsys):
    sizes = ["--num-classes", "10", "--image-size", "160", "--width", "0.125"]
    assert main(["download", NAME, "--keep-tf", *sizes]) == 0
    target = cache / "weights" / f"{NAME}.safetensors"
    assert capsys.readouterr().out.startswith(f"{NAME}: converted {target} (")
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cache {cache}\n") and f"{NAME}" in out and "weights + TF checkpoint" in out
    assert main(["download", NAME, *sizes]) == 0
    assert capsys.readouterr().out.startswith(f"{NAME}: cached {target} (")

    # Each failure is one line with exit code 2; a typo stops before anything is fetched.
    assert main(["download", "gru_shallow", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"it needs {server.url}/gru_shallow/model.ckpt.index" in err
    assert main(["download", "ff_shallow"]) == 2
    assert "'ff_shallow' has no published weights" in capsys.readouterr().err
    assert main(["download", "gru_shalow", NAME]) == 2
    assert "unknown model 'gru_shalow'" in capsys.readouterr().err
    assert main(["download", "gru_shallow", "--base-url", f"{server.url}/mirror"]) == 2
    assert f"{server.url}/mirror/gru_shallow/model.ckpt.index: HTTP 404" in capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    assert not (cache / "weights" / "gru_shallow.safetensors").exists()
