"""Any convrnn model as a Brain-Score ``BrainModel`` (``brainscore_vision.model_interface``).

``ConvRNNBrainModel(model, "my-rgc")`` answers Brain-Score's benchmarks directly:

* ``start_recording(region, time_bins)`` + ``look_at(stimuli)``: the features of the region's layers
  with the ``neural`` presentation (26 steps of 10 ms, image off after step 10; unrolled further when a
  requested bin ends after 260 ms), averaged over the model steps that fall into each requested bin
  (see :mod:`convrnn.brainscore.timebins` for the exact rule, and for every form of ``time_bins``
  Brain-Score passes),
  as a ``NeuroidAssembly`` ``presentation x neuroid x time_bin`` with ``time_bin_start``/``time_bin_end``.
  Only the steps some bin needs are computed.
* ``start_task("label", "imagenet" | [labels])``: the model's own decision (its readout on its own
  presentation) as an ImageNet synset (1000-class models) or as one of the given labels.
* ``start_task("probabilities", fitting_stimuli)``: a logistic readout fitted on the fitting stimuli's
  features, with Brain-Score's own classifier (``ProbabilitiesMapping.ProbabilitiesClassifier``:
  standardised features, multinomial logistic regression, C=1e-3).

Region -> layers comes from the model's area aliases (``V4``, ``pIT``, ``cIT-aIT``, ``IT``) unless a
``region_layer_map`` is given. Images are loaded with :func:`convrnn.data.images.load_image`; by default
the whole image is resized to the model's input size, Brain-Score's convention, so that the declared
``visual_degrees`` are the model's field of view (``preprocess="crop"`` uses the reference's evaluation
transform instead: resize to size/0.875, centre-crop).

This module imports ``brainscore_vision``; ``import convrnn`` does not import this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import transforms

from convrnn.brainscore.timebins import as_time_bins, steps_for_bins, time_bin_weights
from convrnn.data.images import IMAGENET_MEAN, IMAGENET_STD, eval_transform, load_image
from convrnn.data.presentation import NEURAL_TIMES
from convrnn.model import ConvRNN
from convrnn.neural.assembly import model_features

try:
    from brainscore_core.supported_data_standards.brainio.assemblies import BehavioralAssembly, NeuroidAssembly
    from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
    from brainscore_vision.model_interface import BrainModel
except ImportError as e:  # the one place a missing brainscore_vision is reported
    raise ImportError(
        f"convrnn.brainscore needs brainscore-vision ({e}); it pins old numpy/xarray, so install it in an "
        "environment of its own (see `make test-brainscore`)"
    ) from None

__all__ = ["PREPROCESS", "TASKS", "ConvRNNBrainModel", "default_region_layer_map"]

TASKS = ("passive", "label", "probabilities")
PREPROCESS = ("full", "crop")
# Coordinates the adapter sets on the neuroid and time_bin dims; a stimulus column may not reuse them.
_OWN_COORDS = ("neuroid_id", "layer", "region", "time_bin_start", "time_bin_end")


def default_region_layer_map(model: ConvRNN) -> dict[str, list[str]]:
    """The model's own commitment: every area alias of its spec (``V4``, ``pIT``, ``cIT-aIT``, ``IT``)."""
    return {area: list(layers) for area, layers in model.spec.areas.items()}


class ConvRNNBrainModel(BrainModel):
    """A convrnn model behind Brain-Score's ``BrainModel`` interface.

    Args:
        model: any ConvRNN (zoo, trained, searched, converted).
        identifier: the model's Brain-Score identifier (default: the spec's name).
        visual_degrees: the visual angle the model's input covers (Brain-Score's default is 8).
        region_layer_map: ``{region: layer | area | [layers/areas]}`` (default: the spec's area aliases).
        class_labels: names of the model's output classes, for the ``label`` task of models that are not
            1000-class ImageNet models.
        times: steps unrolled for recordings; requested bins must lie within. Default: the neural
            presentation's 26 (0-260 ms), or as many as the latest requested bin needs (the blank that
            follows the image goes on, as it does after the image in the recordings), so benchmarks
            whose bins run past 260 ms are answered. An explicit number is kept to.
        presentation: the presentation for recordings (``neural``: image off after step 10).
        offset_ms: when step 0 starts after stimulus onset.
        preprocess: ``"full"`` (resize the whole image, Brain-Score's convention) or ``"crop"`` (the
            reference's evaluation transform).
        behavior_layer: the layer the ``probabilities`` readout reads (default: the readout's input).
        behavior_step: its step under the model's own presentation (default: the last, as the readout).
        batch_size: images per forward pass.
        device: where to run the model (default: where its parameters are).
        progress: show a progress bar per ``look_at``.
    """

    def __init__(
        self,
        model: ConvRNN,
        identifier: str | None = None,
        *,
        visual_degrees: float = 8,
        region_layer_map: Mapping[str, str | Sequence[str]] | None = None,
        class_labels: Sequence[str] | None = None,
        times: int | None = None,
        presentation: str = "neural",
        offset_ms: float = 0.0,
        preprocess: str = "full",
        behavior_layer: str | None = None,
        behavior_step: int | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        if not visual_degrees > 0:
            raise ValueError(f"visual_degrees: must be > 0, got {visual_degrees}")
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess: unknown {preprocess!r} (known: {', '.join(PREPROCESS)})")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if times is not None and times < 1:
            raise ValueError(f"times: must be >= 1, got {times}")
        self.model = model.eval()
        self._identifier = identifier or model.spec.name
        self._visual_degrees = visual_degrees
        self.region_layer_map = self._resolve_regions(
            default_region_layer_map(model) if region_layer_map is None else region_layer_map
        )
        self.class_labels = self._check_class_labels(class_labels)
        self.times, self.presentation, self.offset_ms = times, presentation, float(offset_ms)
        self.preprocess, self.batch_size, self.progress = preprocess, batch_size, progress
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        spec = model.spec
        self.behavior_layer = behavior_layer or spec.feedforward_input(spec.readout.layer) or spec.readout.layer
        try:  # a clear error for an unknown layer now, not at look_at
            model.area_layers(self.behavior_layer)
        except KeyError as e:
            raise ValueError(f"behavior_layer: {e.args[0].removeprefix('areas: ')}") from None
        self.behavior_step = spec.times - 1 if behavior_step is None else int(behavior_step)
        if not self.behavior_step >= 0:
            raise ValueError(f"behavior_step: must be >= 0, got {behavior_step}")
        # What look_at does: None until a task or a recording is started; the last instruction wins.
        self._mode: str | None = None
        self._recording: dict[str, Any] | None = None
        self._choices: list[str] | str | None = None
        self._classifier: Any = None

    # --- BrainModel ------------------------------------------------------------------------------
    @property
    def identifier(self) -> str:
        return self._identifier

    def visual_degrees(self) -> float:
        """The visual angle (degrees) the model's input image covers."""
        return self._visual_degrees

    def start_task(self, task: str, fitting_stimuli: Any = None) -> None:
        """Begin ``passive`` (recordings, if started), ``label`` or ``probabilities``.

        ``label``: ``fitting_stimuli`` is ``"imagenet"`` (1000-class models: synsets), a list of labels
        (one of the model's ``class_labels``, or for 1000-class models Brain-Score's ImageNet label groups
        such as ``"dog"``), or None (all ``class_labels``, or ``"imagenet"``).
        ``probabilities``: ``fitting_stimuli`` is a StimulusSet with an ``image_label`` column.
        """
        if task not in TASKS:
            raise ValueError(f"task: {task!r} is not supported (supported: {', '.join(TASKS)})")
        if task == BrainModel.Task.passive:
            self._mode = "passive"
        elif task == BrainModel.Task.label:
            self._choices = self._label_choices(fitting_stimuli)
            self._mode = "label"
        else:
            self._classifier = self._fit_probabilities(fitting_stimuli)
            self._mode = "probabilities"

    def start_recording(self, recording_target: str, time_bins: Any) -> None:
        """Record ``recording_target`` (``V4``, ``IT``, ...) in ``time_bins`` (ms) on every ``look_at``.

        ``time_bins``: ``(start_ms, end_ms)`` pairs in any form Brain-Score passes (a list or tuple of
        pairs, an ``(n, 2)`` array, an object array of tuples, ``[array((70, 170), dtype=object)]``
        from a squeezed single-bin assembly, an xarray ``time_bin`` coordinate).
        """
        if recording_target not in self.region_layer_map:
            known = ", ".join(self.region_layer_map) or "none"
            raise ValueError(
                f"recording_target: region {recording_target!r} has no layers in {self.identifier!r} "
                f"(mapped regions: {known}; pass region_layer_map to map it)"
            )
        # Benchmarks pass lists, tuples, arrays of pairs, or (single-bin NeuralBenchmarks) a list holding
        # a 0-d object array; as_time_bins takes every form and names the bin it cannot read.
        bins = as_time_bins(time_bins)
        step_ms = self.model.spec.step_ms
        times = self.times
        if times is None:  # the neural presentation's steps, or more if a bin ends later
            latest = max((b for _, b in bins if np.isfinite(b)), default=self.offset_ms)
            times = max(NEURAL_TIMES, int(np.ceil(round((latest - self.offset_ms) / step_ms, 9))))
        weights = time_bin_weights(bins, times, step_ms, self.offset_ms)
        self._recording = {"region": recording_target, "bins": bins, "weights": weights}
        self._mode = "passive"

    def look_at(self, stimuli: Any, number_of_trials: int = 1) -> Any:
        """Recordings (NeuroidAssembly) or behaviour (BehavioralAssembly) for ``stimuli``.

        ``stimuli``: a Brain-Score StimulusSet (every column becomes a presentation coordinate) or a list
        of image files. The model is deterministic, so ``number_of_trials`` (>= 1) changes nothing.
        """
        if int(number_of_trials) < 1:
            raise ValueError(f"number_of_trials: must be >= 1, got {number_of_trials}")
        if self._mode is None:
            raise ValueError("look_at: call start_task(...) or start_recording(...) first")
        if self._mode == "passive":
            return self._record(stimuli) if self._recording is not None else None
        if self._mode == "label":
            return self._label(stimuli)
        return self._probabilities(stimuli)

    # --- configuration ---------------------------------------------------------------------------
    def _resolve_regions(self, mapping: Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
        """Regions -> unique layer names, in order; unknown layers/areas raise naming the region."""
        out: dict[str, list[str]] = {}
        for region, entry in mapping.items():
            names = [entry] if isinstance(entry, str) else list(entry)
            if not names:
                raise ValueError(f"region_layer_map[{region!r}]: no layers")
            layers: list[str] = []
            for name in names:
                try:
                    found = self.model.area_layers(name)
                except KeyError as e:
                    raise ValueError(f"region_layer_map[{region!r}]: {e.args[0].removeprefix('areas: ')}") from None
                layers += [ln for ln in found if ln not in layers]
            out[str(region)] = layers
        return out

    def _check_class_labels(self, labels: Sequence[str] | None) -> list[str] | None:
        if labels is None:
            return None
        labels = [str(s) for s in labels]
        n = self.model.num_classes
        if len(labels) != n:
            raise ValueError(f"class_labels: {len(labels)} labels for a model with {n} classes")
        if len(set(labels)) != n:
            dup = next(s for s in labels if labels.count(s) > 1)
            raise ValueError(f"class_labels: {dup!r} occurs more than once")
        return labels

    # --- stimuli ---------------------------------------------------------------------------------
    def _stimuli(self, stimuli: Any, what: str = "stimuli") -> tuple[list[str], list[Path], dict[str, np.ndarray]]:
        """Stimulus ids, image files and presentation coordinates of a StimulusSet or a list of files."""
        if isinstance(stimuli, StimulusSet):
            if "stimulus_id" not in stimuli.columns:
                raise ValueError(f"{what}: the StimulusSet has no 'stimulus_id' column")
            ids = [str(s) for s in stimuli["stimulus_id"].values]
            paths = []
            for sid in stimuli["stimulus_id"].values:
                try:
                    paths.append(Path(stimuli.get_stimulus(sid)))
                except (KeyError, TypeError, AttributeError):
                    raise ValueError(f"{what}: no image file for stimulus_id {sid!r}") from None
            clash = [c for c in stimuli.columns if c in _OWN_COORDS]
            if clash:
                raise ValueError(f"{what}: column {clash[0]!r} clashes with a coordinate of the recordings")
            coords = {str(c): np.asarray(stimuli[c].values) for c in stimuli.columns}
        elif isinstance(stimuli, (list, tuple)) and all(isinstance(p, (str, Path)) for p in stimuli):
            paths = [Path(p) for p in stimuli]
            ids = [str(p) for p in stimuli]
            coords = {
                "stimulus_id": np.array(ids, dtype=object),
                "stimulus_path": np.array([str(p) for p in paths], dtype=object),
            }
        else:
            raise ValueError(f"{what}: expected a StimulusSet or a list of image files, got {type(stimuli).__name__}")
        if not ids:
            raise ValueError(f"{what}: no stimuli")
        return ids, paths, coords

    def _transform(self) -> transforms.Compose:
        size = self.model.spec.image_size
        if self.preprocess == "crop":
            return eval_transform(size)
        # Brain-Score's own convention (model_helpers.activations.pytorch): the whole image, squared.
        return transforms.Compose(
            [
                transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def images(self, paths: Sequence[str | Path]) -> Tensor:
        """Image files as the normalised batch (N, 3, S, S) this adapter feeds the model."""
        tf = self._transform()
        return torch.stack([tf(load_image(p)) for p in paths])

    def _chunks(self, ids: list[str], paths: list[Path]) -> Iterator[tuple[list[str], Tensor]]:
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), unit="img", desc=self.identifier, disable=None)
        try:
            for i in range(0, len(ids), self.batch_size):
                chunk = paths[i : i + self.batch_size]
                yield ids[i : i + self.batch_size], self.images(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    # --- recordings ------------------------------------------------------------------------------
    def _record(self, stimuli: Any) -> NeuroidAssembly:
        rec = self._recording
        ids, paths, pres = self._stimuli(stimuli)
        layers = self.region_layer_map[rec["region"]]
        weights: np.ndarray = rec["weights"]
        steps = steps_for_bins(weights)
        w = weights[:, steps]  # (bins, needed steps)
        parts: list[np.ndarray] = []
        feats = None
        for chunk_ids, x in self._chunks(ids, paths):
            # Causal unrolling: computing up to the last needed step gives the same values as all 26.
            feats = model_features(
                self.model,
                x,
                areas=layers,
                times=steps,
                presentation=self.presentation,
                batch_size=self.batch_size,
                stimulus_ids=chunk_ids,
                device=self.device,
            )
            parts.append(np.einsum("pns,bs->pnb", feats.values.astype(np.float64), w).astype(np.float32))
        assert feats is not None  # _stimuli refuses an empty set
        coords: dict[str, tuple[str, Any]] = {name: ("presentation", values) for name, values in pres.items()}
        coords.update(
            {
                "neuroid_id": ("neuroid", feats["neuroid_id"].values.astype(object)),
                "layer": ("neuroid", feats["layer"].values.astype(object)),
                "region": ("neuroid", np.array([rec["region"]] * feats.sizes["neuroid"], dtype=object)),
                "time_bin_start": ("time_bin", np.array([b[0] for b in rec["bins"]])),
                "time_bin_end": ("time_bin", np.array([b[1] for b in rec["bins"]])),
            }
        )
        return NeuroidAssembly(
            np.concatenate(parts, axis=0), coords=coords, dims=["presentation", "neuroid", "time_bin"]
        )

    # --- behaviour -------------------------------------------------------------------------------
    @torch.no_grad()
    def _logits(self, stimuli: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The model's decoded logits (its own readout on its own presentation), (N, K)."""
        ids, paths, pres = self._stimuli(stimuli)
        out = [self.model(x.to(self.device)).decoded.float().cpu().numpy() for _, x in self._chunks(ids, paths)]
        return np.concatenate(out, axis=0), pres

    def _label_choices(self, labels: Any) -> list[str] | str:
        n = self.model.num_classes
        if labels is None:
            labels = self.class_labels if self.class_labels is not None else "imagenet"
        if isinstance(labels, str):
            if labels != "imagenet":
                raise ValueError(f"label task: unknown labeling domain {labels!r} (use 'imagenet' or a list of labels)")
            if n != 1000:
                raise ValueError(
                    f"label task: 'imagenet' needs a 1000-class model, {self.identifier!r} has {n} classes"
                )
            return "imagenet"
        labels = [str(s) for s in labels]
        if not labels:
            raise ValueError("label task: empty list of labels")
        if self.class_labels is not None:
            unknown = [s for s in labels if s not in self.class_labels]
            if unknown:
                raise ValueError(f"label task: {unknown[0]!r} is not one of the model's class_labels")
        elif n == 1000:
            from brainscore_vision.model_helpers.brain_transformation.behavior import LabelToImagenetIndices

            for s in labels:
                try:
                    LabelToImagenetIndices.label_to_indices(s)
                except AttributeError:
                    raise ValueError(f"label task: no ImageNet classes are known for label {s!r}") from None
        else:
            raise ValueError(
                f"label task: {self.identifier!r} has {n} classes and no class_labels naming them "
                "(pass class_labels=[...] to the adapter)"
            )
        return labels

    def _label(self, stimuli: Any) -> BehavioralAssembly:
        logits, pres = self._logits(stimuli)
        extra: dict[str, tuple[str, Any]] = {}
        if self._choices == "imagenet":
            from brainscore_vision.model_helpers.brain_transformation import behavior

            synsets = (Path(behavior.__file__).parent / "imagenet_classes.txt").read_text().splitlines()
            index = logits.argmax(axis=1)
            choices = [synsets[i] for i in index]
            extra = {"synset": ("presentation", choices), "logit": ("presentation", index)}
        else:
            shifted = logits - logits.max(axis=1, keepdims=True)
            prob = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
            if self.class_labels is not None:
                scores = np.stack([prob[:, self.class_labels.index(s)] for s in self._choices], axis=1)
            else:
                # Brain-Score's LabelBehavior: the mean ImageNet probability over each label's classes.
                from brainscore_vision.model_helpers.brain_transformation.behavior import LabelToImagenetIndices

                scores = np.stack(
                    [prob[:, LabelToImagenetIndices.label_to_indices(s)].mean(axis=1) for s in self._choices], axis=1
                )
            choices = [self._choices[i] for i in scores.argmax(axis=1)]
        coords = {name: ("presentation", values) for name, values in pres.items()}
        coords.update({"label": ("presentation", choices), **extra})
        return BehavioralAssembly([choices], coords=coords, dims=["choice", "presentation"])

    @torch.no_grad()
    def behavior_features(self, stimuli: Any, what: str = "stimuli") -> NeuroidAssembly:
        """Features the ``probabilities`` readout reads: ``behavior_layer`` at ``behavior_step``, (N, units)."""
        ids, paths, pres = self._stimuli(stimuli, what)
        rows = []
        for _, x in self._chunks(ids, paths):
            feats = self.model.features(x.to(self.device), areas=[self.behavior_layer], times=[self.behavior_step])
            rows.append(feats[self.behavior_layer][self.behavior_step].flatten(1).float().cpu().numpy())
        data = np.concatenate(rows, axis=0)
        coords: dict[str, tuple[str, Any]] = {name: ("presentation", values) for name, values in pres.items()}
        coords["neuroid_id"] = ("neuroid", np.array([f"{self.behavior_layer}.{i}" for i in range(data.shape[1])]))
        return NeuroidAssembly(data, coords=coords, dims=["presentation", "neuroid"])

    def _fit_probabilities(self, fitting_stimuli: Any) -> Any:
        if not isinstance(fitting_stimuli, StimulusSet):
            raise ValueError("probabilities task: fitting_stimuli must be a StimulusSet with an 'image_label' column")
        if "image_label" not in fitting_stimuli.columns:
            raise ValueError("fitting_stimuli: no 'image_label' column to fit the probabilities readout to")
        if fitting_stimuli["image_label"].nunique() < 2:
            raise ValueError("fitting_stimuli: 'image_label' needs at least two different labels")
        from brainscore_vision.model_helpers.brain_transformation.behavior import ProbabilitiesMapping

        features = self.behavior_features(fitting_stimuli, "fitting_stimuli")
        classifier = ProbabilitiesMapping.ProbabilitiesClassifier()
        classifier.fit(features, features["image_label"])
        return classifier

    def _probabilities(self, stimuli: Any) -> BehavioralAssembly:
        return self._classifier.predict_proba(self.behavior_features(stimuli))
