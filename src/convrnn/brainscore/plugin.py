"""``convrnn brainscore-plugin``: a convrnn model as a Brain-Score model plugin folder.

Brain-Score's submission layout (a zip of it, or a pull request to brain-score/vision)::

    DIR/models/<name>/
        __init__.py               registers the identifier in brainscore_vision.model_registry
        model.py                  get_model / get_layers / get_bibtex / get_model_list
        test.py                   Brain-Score's per-plugin test (the identifier loads)
        requirements.txt          what Brain-Score installs before importing the plugin
        metadata.yaml             schema 2.0 model metadata
        region_layer_map/<id>.json  region -> layer(s), as Brain-Score stores layer commitments
        spec.yaml                 the architecture (convrnn.ModelSpec)
        weights.safetensors       the exact weights exported (random initial ones included)

The plugin rebuilds the model with convrnn and answers through
:class:`convrnn.brainscore.adapter.ConvRNNBrainModel`. The folder is written under a temporary name and
renamed, so a failure leaves nothing half-written. Writing a plugin does not need ``brainscore_vision``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import yaml

import convrnn
from convrnn.model import ConvRNN
from convrnn.spec import ModelSpec

__all__ = ["PluginError", "add_command", "plugin_folder_name", "resolve_model", "write_plugin"]

# Brain-Score finds a plugin by scanning __init__.py files for the literal "model_registry['<id>']",
# so the identifier must be printable without quotes or escapes.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")

BIBTEX = """@inproceedings{nayebi2018task,
  title={Task-Driven Convolutional Recurrent Models of the Visual System},
  author={Nayebi, Aran and Bear, Daniel and Kubilius, Jonas and Kar, Kohitij and Ganguli, Surya and
          Sussillo, David and DiCarlo, James J. and Yamins, Daniel L. K.},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2018}
}
@article{nayebi2022recurrent,
  title={Recurrent Connections in the Primate Ventral Visual Stream Mediate a Trade-Off Between Task
         Performance and Network Size During Core Object Recognition},
  author={Nayebi, Aran and Sagastuy-Brena, Javier and Bear, Daniel M. and Kar, Kohitij and Kubilius, Jonas and
          Ganguli, Surya and Sussillo, David and DiCarlo, James J. and Yamins, Daniel L. K.},
  journal={Neural Computation},
  volume={34},
  number={8},
  year={2022}
}"""

_INIT = '''"""Brain-Score plugin: the convrnn model {identifier!r} (written by `convrnn brainscore-plugin`)."""

from brainscore_vision import model_registry

from .model import get_model

model_registry[{identifier!r}] = lambda: get_model({identifier!r})
'''

_MODEL = '''"""The convrnn model {identifier!r} as a Brain-Score BrainModel.

Rebuilt by convrnn from spec.yaml and weights.safetensors in this folder. Recordings
(start_recording + look_at) use the neural presentation ({steps}, image off after step 10)
and average the model steps that fall into each requested time bin; region -> layers is in
region_layer_map/{identifier}.json. See convrnn.brainscore.ConvRNNBrainModel.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
IDENTIFIER = {identifier!r}
VISUAL_DEGREES = {visual_degrees!r}
CLASS_LABELS = {class_labels!r}
ADAPTER_OPTIONS = {options!r}
BIBTEX = """{bibtex}"""


def get_model_list():
    return [IDENTIFIER]


def region_layer_map():
    return json.loads((HERE / "region_layer_map" / f"{{IDENTIFIER}}.json").read_text())


def get_model(name):
    if name != IDENTIFIER:
        raise ValueError(f"this plugin holds {{IDENTIFIER!r}}, not {{name!r}}")
    import convrnn
    from convrnn.brainscore import ConvRNNBrainModel

    model = convrnn.create_model(convrnn.ModelSpec.load(HERE / "spec.yaml"), weights=HERE / "weights.safetensors")
    return ConvRNNBrainModel(
        model,
        IDENTIFIER,
        visual_degrees=VISUAL_DEGREES,
        region_layer_map=region_layer_map(),
        class_labels=CLASS_LABELS,
        **ADAPTER_OPTIONS,
    )


def get_layers(name):
    if name != IDENTIFIER:
        raise ValueError(f"this plugin holds {{IDENTIFIER!r}}, not {{name!r}}")
    layers = []
    for entry in region_layer_map().values():
        for layer in [entry] if isinstance(entry, str) else entry:
            if layer not in layers:
                layers.append(layer)
    return layers


def get_bibtex(name):
    return BIBTEX


if __name__ == "__main__":
    from brainscore_vision.model_helpers.check_submission import check_models

    check_models.check_brain_models(__name__)
'''

_TEST = """import brainscore_vision


def test_has_identifier():
    model = brainscore_vision.load_model({identifier!r})
    assert model.identifier == {identifier!r}
"""


class PluginError(ValueError):
    """The plugin cannot be written; the message names the culprit."""


def plugin_folder_name(identifier: str) -> str:
    """The plugin's folder (a Python package name): the identifier, lower-cased, ``_`` for the rest."""
    return re.sub(r"[^a-z0-9_]", "_", identifier.lower())


def _region_layers(model: ConvRNN, mapping: Mapping[str, str | Sequence[str]] | None) -> dict[str, list[str]]:
    mapping = {a: list(v) for a, v in model.spec.areas.items()} if mapping is None else mapping
    if not mapping:
        raise PluginError(f"region_layer_map: {model.spec.name!r} has no area aliases; give a region -> layers map")
    out: dict[str, list[str]] = {}
    for region, entry in mapping.items():
        layers: list[str] = []
        for name in [entry] if isinstance(entry, str) else list(entry):
            try:
                layers += [ln for ln in model.area_layers(name) if ln not in layers]
            except KeyError as e:
                raise PluginError(f"region_layer_map[{region!r}]: {e.args[0].removeprefix('areas: ')}") from None
        if not layers:
            raise PluginError(f"region_layer_map[{region!r}]: no layers")
        out[str(region)] = layers
    return out


def _recurrent_cells(spec: ModelSpec) -> list[str]:
    """Cell types that carry state: not identity, nor a frozen time-decay at 0 (a plain pass-through)."""
    kinds = set()
    for layer in spec.layers:
        cell = layer.cell
        passthrough = cell.type == "identity" or (
            cell.type == "timedecay" and not getattr(cell, "trainable", True) and getattr(cell, "decay", 1.0) == 0.0
        )
        if not passthrough:
            kinds.add(cell.type)
    return sorted(kinds)


def _metadata(model: ConvRNN, identifier: str, visual_degrees: float) -> dict:
    spec = model.spec
    cells = _recurrent_cells(spec)
    feedback = sum(e.kind == "feedback" for e in spec.edges)
    recurrent = bool(cells) or feedback > 0
    return {
        "schema_version": "2.0",
        "domain": "vision",
        "models": {
            identifier: {
                "model": {
                    "display_name": identifier,
                    "architecture": {
                        "family": "recurrent_convolutional_neural_network"
                        if recurrent
                        else "convolutional_neural_network",
                        "description": (
                            f"convrnn {spec.name}: {len(spec.layers)} layers, local recurrent cells: "
                            f"{', '.join(cells) or 'none'}, {feedback} long-range feedback edges, unrolled in "
                            f"{spec.step_ms:g}-ms steps (Nayebi et al. 2018, 2022)"
                        ),
                    },
                    "parameter_count": int(sum(p.numel() for p in model.parameters())),
                    "parameter_count_exact": True,
                    "recurrent": recurrent,
                    "input_resolution": {
                        "channels": spec.in_channels,
                        "height": spec.image_size,
                        "width": spec.image_size,
                    },
                    "visual_degrees": float(visual_degrees),
                },
                "io": {
                    "modality": "image",
                    "input_format": "RGB image, resized to the input resolution, ImageNet mean/std normalisation",
                    "output_format": f"{model.num_classes}-class logits per 10-ms step; features per area and step",
                },
                "legal": {"license": "MIT"},
            }
        },
    }


def write_plugin(
    model: ConvRNN,
    out_dir: str | Path,
    *,
    identifier: str | None = None,
    visual_degrees: float = 8,
    region_layer_map: Mapping[str, str | Sequence[str]] | None = None,
    class_labels: Sequence[str] | None = None,
    requirement: str | None = None,
    force: bool = False,
    **adapter_options: object,
) -> Path:
    """Write ``out_dir/models/<name>/``, a Brain-Score plugin serving ``model``; returns that folder.

    Args:
        model: the model to export, with the weights it has now.
        out_dir: the submission root (``models/`` is created in it).
        identifier: the Brain-Score identifier (default: the spec's name).
        visual_degrees: the visual angle of the model's input.
        region_layer_map: ``{region: layer | area | [...]}`` (default: the spec's area aliases).
        class_labels: names of the model's classes, for the ``label`` task of non-ImageNet models.
        requirement: how Brain-Score installs convrnn (default ``convrnn==<this version>``; a
            ``convrnn @ git+https://...`` URL works too).
        force: replace an existing plugin folder of the same name.
        **adapter_options: further :class:`~convrnn.brainscore.adapter.ConvRNNBrainModel` arguments
            (``times``, ``offset_ms``, ``preprocess``, ``presentation``, ``batch_size``, ...), written into
            ``model.py`` as literals.
    """
    identifier = identifier or model.spec.name
    if not _IDENTIFIER.match(identifier):
        raise PluginError(
            f"identifier: {identifier!r} must start with a letter or digit and use only letters, digits and _.:+-"
        )
    if not visual_degrees > 0:
        raise PluginError(f"visual_degrees: must be > 0, got {visual_degrees}")
    if class_labels is not None:
        class_labels = [str(s) for s in class_labels]
        if len(class_labels) != model.num_classes:
            raise PluginError(f"class_labels: {len(class_labels)} labels for a model with {model.num_classes} classes")
    for key, value in adapter_options.items():
        if not isinstance(value, (int, float, str, bool)):
            raise PluginError(f"{key}: only plain values can be written into the plugin, got {type(value).__name__}")
    regions = _region_layers(model, region_layer_map)
    models_dir = Path(out_dir) / "models"
    target = models_dir / plugin_folder_name(identifier)
    if target.exists() and not force:
        raise PluginError(f"{str(target)!r} exists (pass force=True / --force to replace it)")
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models_dir))
    try:
        _write_files(tmp, model, identifier, visual_degrees, regions, class_labels, requirement, adapter_options)
        _publish_permissions(tmp)
        if target.exists():
            # Swap in the new folder first, then drop the old one: the name never points at a partial plugin.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=models_dir))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _publish_permissions(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; give the plugin the usual umask-based modes."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _write_files(
    folder: Path,
    model: ConvRNN,
    identifier: str,
    visual_degrees: float,
    regions: dict[str, list[str]],
    class_labels: list[str] | None,
    requirement: str | None,
    options: dict[str, object],
) -> None:
    from safetensors.torch import save_file

    spec = model.spec
    (folder / "__init__.py").write_text(_INIT.format(identifier=identifier))
    (folder / "model.py").write_text(
        _MODEL.format(
            identifier=identifier,
            visual_degrees=float(visual_degrees),
            class_labels=class_labels,
            options=dict(options),
            bibtex=BIBTEX,
            steps=(
                f"{int(options['times'])} steps of {spec.step_ms:g} ms"  # type: ignore[call-overload]
                if "times" in options
                else f"26 steps of {spec.step_ms:g} ms, more when a requested bin ends later"
            ),
        )
    )
    (folder / "test.py").write_text(_TEST.format(identifier=identifier))
    req = requirement or f"convrnn=={convrnn.__version__}"
    (folder / "requirements.txt").write_text(f"{req}\ntorch\ntorchvision\nnumpy\nxarray\n")
    (folder / "metadata.yaml").write_text(
        yaml.safe_dump(_metadata(model, identifier, visual_degrees), sort_keys=False, width=100)
    )
    (folder / "region_layer_map").mkdir()
    # Brain-Score stores one layer per region as a string; a region spanning several layers is a list.
    rlm = {r: (ls[0] if len(ls) == 1 else ls) for r, ls in regions.items()}
    (folder / "region_layer_map" / f"{identifier}.json").write_text(json.dumps(rlm, indent=4) + "\n")
    spec.save(folder / "spec.yaml")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"), metadata={"identifier": identifier, "model": spec.name})


# --- command line --------------------------------------------------------------------------------
def resolve_model(name: str, weights: Path | None = None, overrides: Mapping[str, object] | None = None) -> ConvRNN:
    """A model from a zoo name, a spec file (.yaml/.yml/.json) or a training run folder (its ``final/``)."""
    overrides = dict(overrides or {})
    path = Path(name)
    spec_file: Path | None = None
    if path.is_dir():
        spec_file = path / "final" / "spec.yaml"
        if not spec_file.is_file():
            raise PluginError(f"model: {name!r} is a folder but not a finished run (no final/spec.yaml)")
        if weights is None:
            weights = path / "final" / "model.safetensors"
    elif path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise FileNotFoundError(f"model: no such spec file {name!r}")
        spec_file = path
    if spec_file is not None:
        if overrides:
            raise PluginError(f"model: {sorted(overrides)} apply to zoo models, not to {name!r}")
        return convrnn.create_model(ModelSpec.load(spec_file), weights=weights)
    return convrnn.create_model(name, weights=weights, **overrides)


def _cmd(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)  # random initial weights (no --weights) are exported reproducibly
    overrides = {
        k: v
        for k, v in (("num_classes", args.num_classes), ("image_size", args.image_size), ("width", args.width))
        if v is not None
    }
    model = resolve_model(args.model, args.weights, overrides)
    rlm = None
    if args.region_layer_map is not None:
        try:
            rlm = json.loads(args.region_layer_map.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PluginError(f"--region-layer-map: cannot read {str(args.region_layer_map)!r}: {e}") from None
        if not isinstance(rlm, dict):
            raise PluginError(f"--region-layer-map: {str(args.region_layer_map)!r} must hold a JSON object")
    labels = None
    if args.class_labels is not None:
        if not args.class_labels.is_file():
            raise FileNotFoundError(f"--class-labels: no such file {str(args.class_labels)!r}")
        labels = [s.strip() for s in args.class_labels.read_text().splitlines() if s.strip()]
    folder = write_plugin(
        model,
        args.dir,
        identifier=args.identifier,
        visual_degrees=args.visual_degrees,
        region_layer_map=rlm,
        class_labels=labels,
        requirement=args.requirement,
        force=args.force,
    )
    regions = json.loads((folder / "region_layer_map" / f"{args.identifier or model.spec.name}.json").read_text())
    print(f"wrote {folder}")
    for region, layers in regions.items():
        print(f"  {region:>8s}: {layers if isinstance(layers, str) else ' + '.join(layers)}")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``convrnn brainscore-plugin MODEL DIR``."""
    s = sub.add_parser(
        "brainscore-plugin",
        help="write a Brain-Score model plugin folder (DIR/models/<name>/) for a model",
        description="Write DIR/models/<name>/ in Brain-Score's submission layout; it rebuilds the model with convrnn.",
    )
    s.add_argument("model", help="zoo name, spec file (.yaml/.json) or training run folder")
    s.add_argument("dir", type=Path, help="submission root; the plugin goes to DIR/models/<name>/")
    s.add_argument("--weights", type=Path, help="a .safetensors file or PyTorch state dict to load first")
    s.add_argument("--identifier", help="Brain-Score identifier (default: the model's name)")
    s.add_argument("--num-classes", type=int, default=None)
    s.add_argument("--image-size", type=int, default=None, help="input size in px (default: the model's)")
    s.add_argument("--width", type=float, default=None, help="channel width multiplier")
    s.add_argument("--visual-degrees", type=float, default=8.0, help="visual angle of the input (default 8)")
    s.add_argument("--region-layer-map", type=Path, help="JSON {region: layer or [layers/areas]} (default: V4, IT...)")
    s.add_argument("--class-labels", type=Path, help="text file, one class name per line (non-ImageNet models)")
    s.add_argument("--requirement", help="how Brain-Score installs convrnn (default convrnn==VERSION)")
    s.add_argument("--seed", type=int, default=0, help="seed for random initial weights (no --weights)")
    s.add_argument("--force", action="store_true", help="replace an existing plugin folder")
    s.set_defaults(fn=_cmd)
