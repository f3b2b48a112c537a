"""What the zoo records about the published weights, and where the cache is: no network, no reference data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import convrnn
from convrnn.zoo import model_entry, published_models
from convrnn.zoo.pretrained import cache_dir, cached_models, is_offline, pretrained_weights


def test_cache_dir_follows_torch_home_rules(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVRNN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "home"
    monkeypatch.delenv("CONVRNN_HOME")
    assert cache_dir() == tmp_path / "xdg" / "convrnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_dir() == tmp_path / "user" / ".cache" / "convrnn"
    assert cached_models() == []  # no cache folder yet: nothing, and no error
    for value, offline in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("CONVRNN_OFFLINE", value)
        assert is_offline() is offline


def test_entries_record_files_urls_transform_and_size(monkeypatch):
    names = published_models()
    assert len(names) == 20 and "ff_shallow" not in names
    info = pretrained_weights("rgc_intermediate")
    # Sizes of the published files are not known here: recorded as unknown, never guessed.
    assert info.files == {"model.ckpt.index": None, "model.ckpt.data-00000-of-00001": None}
    monkeypatch.delenv("CONVRNN_BASE_URL", raising=False)
    assert info.file_url("model.ckpt.index") == (
        "https://convrnnckpts.s3-us-west-1.amazonaws.com/rgc_intermediate/model.ckpt.index"
    )
    monkeypatch.setenv("CONVRNN_BASE_URL", "https://mirror.lab/convrnn/")
    assert info.file_url("model.ckpt.index") == "https://mirror.lab/convrnn/rgc_intermediate/model.ckpt.index"
    assert info.file_url("x", base_url="file:///srv/ckpts") == "file:///srv/ckpts/rgc_intermediate/x"
    cfg = convrnn.create_model("rgc_intermediate", width=0.0625, image_size=32).pretrained_cfg
    assert cfg["files"] == info.files and cfg["files"] is not info.files  # a copy
    assert (cfg["top1"], cfg["presentation"]) == (73.0, "default")

    x = info.transforms()(Image.new("RGB", (300, 400), (124, 116, 104)))
    assert x.shape == (3, 224, 224) and x.abs().max() < 0.01  # the ImageNet mean maps to about 0

    small = model_entry("timedecay_shallow").weights
    model = convrnn.create_model("timedecay_shallow")
    assert small.num_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_no_published_weights_lists_the_names():
    with pytest.raises(ValueError, match=r"'ff_shallow' has no published weights; .*rgc_intermediate, "):
        pretrained_weights("ff_shallow")
    with pytest.raises(KeyError, match="unknown model"):
        pretrained_weights("rgc_deep")


def test_load_weights_names_shape_mismatches(tmp_path: Path):
    from safetensors.torch import save_file

    a = convrnn.create_model("timedecay_shallow", num_classes=3, image_size=64, width=0.125)
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "a.safetensors"))
    b = convrnn.create_model("timedecay_shallow", num_classes=4, image_size=64, width=0.125)
    with pytest.raises(ValueError, match=r"a.safetensors: shapes differ from the model's: layers\.imnetds"):
        convrnn.load_weights(b, tmp_path / "a.safetensors")
    assert not torch.equal(
        b.state_dict()["layers.conv1.pre.0.conv.weight"], a.state_dict()["layers.conv1.pre.0.conv.weight"]
    )
