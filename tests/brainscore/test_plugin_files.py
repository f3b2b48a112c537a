"""The plugin folder convrnn writes (no Brain-Score needed to write it), and convrnn without Brain-Score."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

import convrnn
from convrnn.brainscore import PluginError, write_plugin
from convrnn.brainscore import plugin as plugin_module
from convrnn.cli import main

TINY = ["--num-classes", "10", "--image-size", "32", "--width", "0.125"]
FILES = {
    "__init__.py",
    "model.py",
    "test.py",
    "requirements.txt",
    "metadata.yaml",
    "region_layer_map",
    "spec.yaml",
    "weights.safetensors",
}


def test_convrnn_does_not_import_brainscore() -> None:
    code = (
        "import sys, convrnn, convrnn.cli, convrnn.brainscore, convrnn.brainscore.plugin\n"
        "convrnn.cli.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('brainscore_vision', 'brainscore_core')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_adapter_without_brainscore_says_what_is_missing() -> None:
    try:
        import brainscore_vision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("brainscore-vision is installed here")
    with pytest.raises(ImportError, match=r"convrnn.brainscore needs brainscore-vision .*environment of its own"):
        from convrnn.brainscore import ConvRNNBrainModel  # noqa: F401


def test_cli_writes_the_submission_layout(
    make_model: Callable[..., convrnn.ConvRNN], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["brainscore-plugin", "rgc_shallow", str(tmp_path), *TINY, "--identifier", "convrnn-RGC.tiny"])
    assert rc == 0
    folder = tmp_path / "models" / "convrnn_rgc_tiny"
    assert str(folder) in capsys.readouterr().out
    assert {p.name for p in folder.iterdir()} == FILES
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["convrnn_rgc_tiny"]  # no temporary leftovers
    init = (folder / "__init__.py").read_text()
    # Brain-Score locates a plugin by this literal text in its __init__.py.
    assert "model_registry['convrnn-RGC.tiny']" in init
    rlm = json.loads((folder / "region_layer_map" / "convrnn-RGC.tiny.json").read_text())
    assert rlm == {"V4": "conv3", "pIT": "conv4", "cIT-aIT": "conv5", "IT": ["conv4", "conv5"]}
    meta = yaml.safe_load((folder / "metadata.yaml").read_text())
    entry = meta["models"]["convrnn-RGC.tiny"]
    assert meta["schema_version"] == "2.0" and entry["model"]["recurrent"] is True
    assert entry["model"]["input_resolution"] == {"channels": 3, "height": 32, "width": 32}
    assert entry["model"]["visual_degrees"] == 8.0
    assert (folder / "requirements.txt").read_text().splitlines()[0] == f"convrnn=={convrnn.__version__}"
    compile((folder / "model.py").read_text(), "model.py", "exec")
    compile((folder / "test.py").read_text(), "test.py", "exec")
    assert (folder / "model.py").stat().st_mode & 0o044  # readable by others, not mkdtemp's 0700
    # The exported spec + weights rebuild exactly the model that was exported (seed 0, random weights).
    rebuilt = convrnn.create_model(convrnn.ModelSpec.load(folder / "spec.yaml"), weights=folder / "weights.safetensors")
    original = make_model(seed=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).logits, original(x).logits, rtol=0, atol=0)


def test_weights_are_loaded_before_export(make_model: Callable[..., convrnn.ConvRNN], tmp_path: Path) -> None:
    src = make_model(seed=3)
    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    assert main(["brainscore-plugin", "rgc_shallow", str(tmp_path / "out"), *TINY, "--weights", str(weights)]) == 0
    folder = tmp_path / "out" / "models" / "rgc_shallow"
    rebuilt = convrnn.create_model(convrnn.ModelSpec.load(folder / "spec.yaml"), weights=folder / "weights.safetensors")
    for k, v in src.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v, rtol=0, atol=0)


def test_spec_file_and_options(make_model: Callable[..., convrnn.ConvRNN], tmp_path: Path) -> None:
    spec = make_model().spec
    spec.save(tmp_path / "m.yaml")
    (tmp_path / "rlm.json").write_text(json.dumps({"V1": "conv1", "IT": ["cIT-aIT"]}))
    (tmp_path / "labels.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    args = ["brainscore-plugin", str(tmp_path / "m.yaml"), str(tmp_path / "out"), "--visual-degrees", "10"]
    args += ["--region-layer-map", str(tmp_path / "rlm.json"), "--class-labels", str(tmp_path / "labels.txt")]
    assert main([*args, "--identifier", "tiny"]) == 0
    folder = tmp_path / "out" / "models" / "tiny"
    assert json.loads((folder / "region_layer_map" / "tiny.json").read_text()) == {"V1": "conv1", "IT": "conv5"}
    text = (folder / "model.py").read_text()
    assert "VISUAL_DEGREES = 10.0" in text and "'class9'" in text


def test_existing_folder_needs_force_and_is_replaced_whole(
    make_model: Callable[..., convrnn.ConvRNN], tmp_path: Path
) -> None:
    m = make_model()
    folder = write_plugin(m, tmp_path, identifier="tiny")
    (folder / "stale.txt").write_text("from an older export")
    with pytest.raises(PluginError, match=r"exists \(pass force=True / --force"):
        write_plugin(m, tmp_path, identifier="tiny")
    assert (folder / "stale.txt").exists()
    write_plugin(m, tmp_path, identifier="tiny", force=True, offset_ms=10.0)
    assert not (folder / "stale.txt").exists()
    assert "'offset_ms': 10.0" in (folder / "model.py").read_text()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny"]


def test_a_failed_write_leaves_nothing(
    make_model: Callable[..., convrnn.ConvRNN], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(folder: Path, *args: object) -> None:
        (folder / "__init__.py").write_text("partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(plugin_module, "_write_files", half_write)
    with pytest.raises(OSError, match="No space"):
        write_plugin(make_model(), tmp_path, identifier="tiny")
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"identifier": "it's"}, r"identifier: \"it's\" must start"),
        ({"identifier": "_hidden"}, r"identifier: '_hidden'"),
        ({"region_layer_map": {"IT": ["conv9"]}}, r"region_layer_map\['IT'\]: unknown area 'conv9'"),
        ({"region_layer_map": {"IT": []}}, r"region_layer_map\['IT'\]: no layers"),
        ({"class_labels": ["a", "b"]}, r"class_labels: 2 labels for a model with 10 classes"),
        ({"visual_degrees": 0}, r"visual_degrees: must be > 0"),
        ({"times": [26]}, r"times: only plain values"),
    ],
)
def test_bad_input(make_model: Callable[..., convrnn.ConvRNN], tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        write_plugin(make_model(), tmp_path, **kwargs)
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


def test_cli_bad_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["brainscore-plugin", "rgc_shalow", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convrnn: unknown model 'rgc_shalow'") and "\n" not in err
    (tmp_path / "run").mkdir()
    assert main(["brainscore-plugin", str(tmp_path / "run"), str(tmp_path)]) == 2
    assert "not a finished run (no final/spec.yaml)" in capsys.readouterr().err
    assert main(["brainscore-plugin", str(tmp_path / "nope.yaml"), str(tmp_path)]) == 2
    assert "no such spec file" in capsys.readouterr().err
