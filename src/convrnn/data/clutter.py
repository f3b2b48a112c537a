"""Cluttered, occluded digits: the built-in training task (after Spoerer et al. 2017, "digit clutter/debris").

The same clutter can be built from photographs of garments instead of digits (``objects="fashion"``, below).

Each image is grayscale on a black background and holds one *target* digit among *distractor* digits and
*debris*; the label is the target's class (10 classes, "0".."9").

**What the target is.** The target is the largest whole digit, and the only whole digit drawn at full
brightness. Distractors are whole digits of random classes, 45-75% of the target's height and 35-70% of its
brightness, drawn *behind* it (they may overlap it). Debris are fragments of other digits (random rectangular
crops, 20-45% of a side, of a digit 0.7-1.1 times the target's height) at 35-100% brightness, drawn *in front*
of everything. Every stroke carries a thin black outline, so what is drawn later hides what lies under it.
``occlusion`` bounds the fraction of the target's stroke pixels hidden by debris (a stroke pixel is hidden
once the debris over it have taken away more than half its brightness; measured per image, and a fragment
that would exceed the bound is re-drawn elsewhere, or left out after 20 tries). No local feature identifies
the target: a bright stroke may be debris, a digit shape may be a distractor. The network has to group
strokes into a whole digit, compare sizes and brightness across the image, and read the target through the
holes the debris cut.

**Digits.** Two sources (``source``; "both" picks one at random for every digit): real handwriting shipped
with scikit-learn (``load_digits``: 1,797 8x8 images, 16 gray levels), upsampled smoothly (bicubic, then a
Gaussian blur) to a 32x32 "ink field"; and the font Pillow bundles (``ImageFont.load_default(size=...)``,
Aileron Regular, in three weights), rendered large and shrunk to the same field. A digit is drawn by
sampling its field (bilinear) through a random affine map (scale, rotation, shear, aspect) and thresholding
it softly: the threshold sets the stroke width, and a lower threshold of the same field gives the outline.
The handwritten exemplars are split 80/20 per class by a fixed permutation: "train" and "val" use disjoint
exemplars (1,437 and 360, for every digit in the image, not just the target) and different random streams,
so validation measures generalisation to digits never seen in training. (To other exemplars, not other
writers: ``load_digits`` is the UCI test set, written by 13 people, and carries no writer ids, so the same
hands are on both sides.) The font glyphs (one typeface) are in every split.

**Test split.** "test" draws from the same held-out pool as "val" (the 360 held-out handwritten exemplars;
garments: Fashion-MNIST's test photographs) but from its own random stream, so its images are other images
than val's, never used for training nor for choosing a model: report final numbers on it. The held-out
*exemplars* are shared with val (there are only 360), so test and val differ in every draw (classes, poses,
distractors, debris, which exemplar) but not in the pool of digit shapes. Train and val images are what they
were before "test" existed (same bytes, same cache files).

**Garments** (``objects="fashion"``; the default ``"digits"`` is everything above, unchanged). Targets,
distractors and debris are Fashion-MNIST photographs (:mod:`convrnn.data.fashion`; 10 classes, "T-shirt/top"
to "Ankle boot") instead of digits, placed, sized, dimmed, outlined and cut into fragments by the same rules
and random streams. A garment keeps its own gray texture (scaled so its brightest pixel is 1, then by its
intensity) inside its silhouette (the pixels above 8/255 with their holes filled, blurred by 0.7 px); the
silhouette, not a stroke threshold, decides what it hides (``stroke`` and ``source`` apply to digits only),
and the occlusion bound counts the target's silhouette pixels. The photographs' own split is kept: "train"
images draw from Fashion-MNIST's training set (1,200 photographs per class, a fixed balanced subset of its
60,000, which keeps the exemplar bank within float32-exact indexing), "val" and "test" from its 10,000 test
photographs. The files must be installed (``apt-get install dataset-fashion-mnist``; otherwise a one-line
error says so).
Garment images also depend on the Fashion-MNIST files (their hash is part of the cache key) and SciPy (hole
filling). 10,000 of them took 7.2 s at 32 px (reading the files and building the bank included, once per
process) and 10.9 s at 48 px, measured while the 2-core machine was shared with other jobs.

**Determinism.** Images depend only on (n, seed, split, config) and the numpy / Pillow / scikit-learn
versions. Each chunk of images has its own ``numpy.random.Generator`` seeded from (seed, the split's index
in ``SPLITS``: 0 train, 1 val, 2 test, chunk index), so the thread pool that renders chunks in parallel does
not change the result, whatever the number of CPUs;
no global RNG is touched. The pixel path uses only correctly rounded elementwise float operations (no BLAS,
no vectorised transcendental functions), so different CPUs give byte-identical images.

**Speed and cache** (measured on the 2-core development machine): 10,000 images take 1.0 s at 32 px and
4.4 s at 64 px (1.9 s and 8.5 s on one thread), plus 0.3 s once per process to prepare the digits.
:func:`load_clutter` caches them as ``.npz`` (uint8 ``images``, int64 ``labels``, the meta arrays below, the
``knobs`` as JSON; 10 MB for 10,000 images at 32 px) in ``cache_dir`` (default ``$CONVRNN_CACHE``, else
``~/.cache/convrnn``), written under a temporary name then renamed, named by a hash of every knob; loading
them again takes 5-8 ms. A file written before the meta arrays were cached (images and labels only) is
regenerated, into the same name, on first use.

**Per-image meta** (:func:`load_clutter_meta`, ``ClutterDataset.meta``), for analysing accuracy by difficulty:
``occluded`` (float32) is the fraction of the target's stroke pixels (a garment's silhouette pixels) hidden by
debris, as the occlusion bound measures it (at most ``occlusion``); ``debris`` (int64) the number of fragments
drawn in front (at most ``debris``: a fragment that would break the bound in all 20 tries is left out, so a
low count marks a target that was hard to avoid); ``exemplar`` (int64) the target's index in
``sklearn.datasets.load_digits()`` (-1 for a font glyph; garments: its index in the Fashion-MNIST file the split
reads), which tells handwritten from font targets and finds repeated exemplars.

**Difficulty** (measured on the development machine, default config, 32 px): a small feed-forward CNN
(3 conv layers 3x3 with 16/32/32 channels, each with BatchNorm and ReLU, 2x2 max-pooling after the first two;
global average pool; linear), trained with Adam (lr 1e-3, batch 64) on 10,000 train images for 3 epochs,
reaches 59-66% accuracy on 2,000 val images (mean 62.6% over 3 seeds; chance is 10%), and 77% after 10
epochs. On the same digits without distractors and debris it reaches 90% in 3 epochs: the clutter, not
the digits, makes the task hard. (BatchNorm statistics were recomputed on the training set before each
evaluation; without BatchNorm the same net learns more slowly: 40% after 3 epochs.)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.utils.data import Dataset

from convrnn.data.fashion import CLASSES as FASHION_CLASSES
from convrnn.data.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CLASSES",
    "FASHION_CLASSES",
    "OBJECTS",
    "SOURCES",
    "SPLITS",
    "ClutterConfig",
    "ClutterDataset",
    "cache_path",
    "classes",
    "default_cache_dir",
    "generate",
    "load_clutter",
    "load_clutter_meta",
]

SPLITS = ("train", "val", "test")  # the index is the split's seed offset: never reorder, only append
SOURCES = ("handwritten", "font", "both")
OBJECTS = ("digits", "fashion")
CLASSES = [str(d) for d in range(10)]

# Bump when the drawing changes, so stale cache files are not reused.
GENERATOR_VERSION = 1

FIELD = 32  # side of a digit's ink field, in field pixels
GLYPH = 24  # height of the digit inside its field
_BORDER = 2  # zero border around each field: lookups off the field read 0 without bounds checks
_PAD = FIELD + 2 * _BORDER
_SPLIT_SEED = 20170901  # fixed permutation that splits the handwritten exemplars (never change: it defines val)
_VAL_FRACTION = 0.2
_FONT_SIZE = 96
_FONT_STROKES = (0, 3, 6)  # three weights of the one bundled typeface
_MAX_TRIES = 20  # re-draws of one debris fragment that would hide too much of the target
_CHUNK_PIXELS = 2**20  # pixels rendered at once (1,024 images at 32 px): bounds memory to ~100 MB per thread
_OUTLINE = 0.2  # the outline is the field above (threshold - _OUTLINE): about 1 px around each stroke
_EDGE = 4.0  # soft-threshold slope per (canvas px / field px): anti-aliased edges about 1 canvas px wide
_FASHION_SIZE = 28  # side of a Fashion-MNIST photograph: a garment's nominal height, as GLYPH is a digit's
_FASHION_INK = 8  # gray levels (of 255) above which a Fashion-MNIST pixel belongs to the garment
_FASHION_PER_CLASS = 1200  # training photographs per class in the "train" bank: 12,000 x _PAD^2 < 2^24
_FASHION_SPLIT_SEED = 20170825  # fixed choice of those photographs (never change: it defines the train bank)


def _check_range(name: str, value: object, lo: float, hi: float) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and lo <= value[0] <= value[1] <= hi
    )
    if not ok:
        raise ValueError(
            f"ClutterConfig.{name} must be a pair (low, high) with {lo} <= low <= high <= {hi}, got {value!r}"
        )


@dataclass(frozen=True)
class ClutterConfig:
    """Every knob of the generator; the defaults are the task as tuned (see the module docstring).

    Sizes are digit heights; ``target_scale`` is relative to the image, ``distractor_scale`` and
    ``debris_scale`` to the target. Intensities are in [0, 1] (the target is always 1).
    """

    image_size: int = 32  # 32..64 px, square
    distractors: int = 2  # whole digits behind the target
    debris: int = 6  # occluding fragments in front of it
    occlusion: float = 0.3  # max fraction of the target's stroke pixels hidden by debris
    source: str = "both"  # "handwritten" | "font" | "both" (each digit picks one at random)
    target_scale: tuple[float, float] = (0.55, 0.8)  # target height / image size
    distractor_scale: tuple[float, float] = (0.45, 0.75)  # distractor height / target height
    debris_scale: tuple[float, float] = (0.7, 1.1)  # height of the digit a fragment is cut from / target height
    fragment: tuple[float, float] = (0.2, 0.45)  # side of a fragment's crop / side of its digit's field
    rotation: float = 15.0  # max |angle| in degrees, every digit
    shear: float = 0.1  # max |horizontal shear|
    aspect: tuple[float, float] = (0.9, 1.1)  # width stretch
    stroke: tuple[float, float] = (0.4, 0.7)  # ink threshold: low = thick strokes, high = thin
    distractor_intensity: tuple[float, float] = (0.35, 0.7)
    debris_intensity: tuple[float, float] = (0.35, 1.0)
    objects: str = "digits"  # "digits" | "fashion" (Fashion-MNIST garments; see the module docstring)

    def __post_init__(self) -> None:
        for name in _RANGES:  # accept lists (e.g. from YAML or JSON) for the (low, high) knobs
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        size = self.image_size
        if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= 64:
            raise ValueError(f"ClutterConfig.image_size must be an integer in 32..64, got {size!r}")
        for name in ("distractors", "debris"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 64:
                raise ValueError(f"ClutterConfig.{name} must be an integer in 0..64, got {v!r}")
        for name, hi in (("occlusion", 1.0), ("rotation", 180.0), ("shear", 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ValueError(f"ClutterConfig.{name} must be a number in [0, {hi}], got {v!r}")
        if self.source not in SOURCES:
            raise ValueError(f"ClutterConfig.source must be one of {SOURCES}, got {self.source!r}")
        if self.objects not in OBJECTS:
            raise ValueError(f"ClutterConfig.objects must be one of {OBJECTS}, got {self.objects!r}")
        for name, (lo, hi) in _RANGES.items():
            _check_range(name, getattr(self, name), lo, hi)


# The (low, high) knobs and the interval each must lie in.
_RANGES = {
    "target_scale": (0.1, 1.0),
    "distractor_scale": (0.1, 1.0),
    "debris_scale": (0.1, 2.0),
    "fragment": (0.05, 1.0),
    "aspect": (0.25, 4.0),
    "stroke": (0.05, 0.95),
    "distractor_intensity": (0.0, 1.0),
    "debris_intensity": (0.0, 1.0),
}


def _check_split(split: str) -> int:
    """The split's index (its seed offset); a clear error for any other name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _pool(split: str) -> str:
    """The exemplar pool ``split`` draws from: "train" its own, "val" and "test" the held-out one ("val")."""
    return "train" if _check_split(split) == 0 else "val"


# ----------------------------------------------------------------------------------------------------------------
# Ink fields: every digit exemplar as a smooth (FIELD, FIELD) map in [0, 1], digit GLYPH px tall and centred.


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur as a fixed sum of shifted copies: exact IEEE ops, the same on every CPU."""
    r = max(1, math.ceil(3 * sigma))
    w = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-r, r + 1)]
    w = [x / math.fsum(w) for x in w]
    for axis in (0, 1):
        p = np.pad(a, [(r, r) if ax == axis else (0, 0) for ax in range(2)])
        n = a.shape[axis]
        out = np.zeros_like(a)
        for i, wi in enumerate(w):
            out += wi * (p[i : i + n] if axis == 0 else p[:, i : i + n])
        a = out
    return a


def _to_field(ink: np.ndarray) -> np.ndarray:
    """Centre an ink image (GLYPH rows) in a FIELD x FIELD field, blur it, scale its max to 1."""
    h, w = ink.shape
    if w > FIELD - 4:  # a very wide glyph: crop its sides rather than overflow the field
        ink = ink[:, (w - FIELD + 4) // 2 :][:, : FIELD - 4]
        h, w = ink.shape
    field = np.zeros((FIELD, FIELD), np.float32)
    top, left = (FIELD - h) // 2, (FIELD - w) // 2
    field[top : top + h, left : left + w] = ink
    field = _blur(np.clip(field, 0, None), 1.0)
    return (field / field.max()).astype(np.float32)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) in 0..16 and labels, as ``sklearn.datasets.load_digits``.

    Reads the file scikit-learn ships directly when it is where it has always been: importing sklearn takes
    over a second (it pulls in scipy), which would otherwise be paid by every process that draws images.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as fh:
                data = np.loadtxt(fh, delimiter=",")
            if data.shape == (1797, 65):
                return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the handwritten clutter digits need scikit-learn: pip install scikit-learn") from e
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _handwritten() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as fields (1797, FIELD, FIELD) and their labels."""
    images, labels = _load_digits()
    fields = []
    for img in images:
        # 8x8 at 16 levels -> pad -> bicubic x3 (8 rows -> 24 = GLYPH) -> blur: strokes, not blocks.
        small = Image.fromarray(np.pad(img / 16.0, 1).astype(np.float32), mode="F")
        big = np.asarray(small.resize((30, 30), Image.Resampling.BICUBIC), dtype=np.float32)[3:27, 3:27]
        fields.append(_to_field(big))
    return np.stack(fields), labels


@lru_cache(maxsize=1)
def _font() -> tuple[np.ndarray, np.ndarray]:
    """The digits of Pillow's bundled font in three weights as fields (30, FIELD, FIELD) and their labels."""
    font = ImageFont.load_default(size=_FONT_SIZE)
    fields, labels = [], []
    for label, char in enumerate(CLASSES):
        for stroke in _FONT_STROKES:
            img = Image.new("L", (_FONT_SIZE * 2, _FONT_SIZE * 2))
            ImageDraw.Draw(img).text(
                (_FONT_SIZE // 4,) * 2, char, fill=255, font=font, stroke_width=stroke, stroke_fill=255
            )
            img = img.crop(img.getbbox())
            w = max(1, round(img.width * GLYPH / img.height))
            ink = np.asarray(img.resize((w, GLYPH), Image.Resampling.LANCZOS), dtype=np.float32) / 255
            fields.append(_to_field(ink))
            labels.append(label)
    return np.stack(fields), np.array(labels, np.int64)


def _exemplar_indices(split: str) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of the handwritten exemplars that ``split`` draws.

    A fixed permutation per class puts 80% in "train" and 20% in "val"; the two are disjoint and cover all
    1,797. "test" draws the same held-out 20% as "val". Sorted ascending.
    """
    which = _check_split(split)
    labels = _handwritten()[1]
    rng = np.random.Generator(np.random.PCG64(_SPLIT_SEED))
    picked = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(idx) * _VAL_FRACTION)
        picked.append(idx[n_val:] if which == 0 else idx[:n_val])
    return np.sort(np.concatenate(picked))


@dataclass
class _Bank:
    """The fields a split draws from, padded and flattened for gathers, with per-class lookup tables."""

    flat: np.ndarray  # (E * _PAD * _PAD,) float32
    origin: np.ndarray  # (E,) sklearn index of each field, -1 for font glyphs (garments: Fashion-MNIST index)
    hand: tuple[np.ndarray, np.ndarray, np.ndarray]  # (bank indices sorted by class, start per class, count per class)
    font: tuple[np.ndarray, np.ndarray, np.ndarray]
    glyph: int = GLYPH  # nominal object height in field px (what a drawn height is measured against)
    mask: np.ndarray | None = None  # garments only: their silhouettes, laid out as ``flat``

    def pick(self, rng: np.random.Generator, labels: np.ndarray, use_font: np.ndarray) -> np.ndarray:
        """A random exemplar of each label from the handwritten or the font pool."""
        u = rng.random(len(labels))
        out = np.empty(len(labels), np.int64)
        for flag, (order, start, count) in ((False, self.hand), (True, self.font)):
            m = use_font == flag
            if m.any():
                c = labels[m]
                out[m] = order[start[c] + np.minimum((u[m] * count[c]).astype(np.int64), count[c] - 1)]
        return out


def _class_table(labels: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    count = np.bincount(labels, minlength=10)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return order + offset, start, count


@lru_cache(maxsize=8)
def _bank(split: str, objects: str = "digits") -> _Bank:
    """The exemplars ``split`` draws; "test" shares "val"'s bank (the same object: built once, as long as callers
    pass ``objects`` positionally like :func:`_generate`, since lru_cache keys ``f(a)`` and ``f(a, b)`` apart)."""
    if _pool(split) != split:
        return _bank(_pool(split), objects)
    if objects == "fashion":
        return _fashion_bank(split)
    hand_fields, hand_labels = _handwritten()
    idx = _exemplar_indices(split)
    font_fields, font_labels = _font()
    fields = np.pad(np.concatenate([hand_fields[idx], font_fields]), ((0, 0), (_BORDER, _BORDER), (_BORDER, _BORDER)))
    assert fields.size < 2**24, "flat indices must stay exact in float32 (see _render)"
    return _Bank(
        flat=np.ascontiguousarray(fields, np.float32).reshape(-1),
        origin=np.concatenate([idx, np.full(len(font_fields), -1)]),
        hand=_class_table(hand_labels[idx], 0),
        font=_class_table(font_labels, len(idx)),
    )


def _blur_stack(a: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`_blur` of every (H, W) image of an (n, H, W) stack at once (the same exact IEEE sums)."""
    r = max(1, math.ceil(3 * sigma))
    w = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-r, r + 1)]
    w = [x / math.fsum(w) for x in w]
    for axis in (1, 2):
        p = np.pad(a, [(r, r) if ax == axis else (0, 0) for ax in range(3)])
        n = a.shape[axis]
        out = np.zeros_like(a)
        for i, wi in enumerate(w):
            out += wi * (p[:, i : i + n] if axis == 1 else p[:, :, i : i + n])
        a = out
    return a


def _fashion_indices(split: str, labels: np.ndarray) -> np.ndarray:
    """Which photographs of the Fashion-MNIST file a split's bank holds, sorted ascending.

    "val" and "test" take the whole test file; "train" a fixed balanced subset of the training file (the bank's
    flat indices must stay exact in float32, see :func:`_render`, which caps it near 12,900 photographs).
    """
    if _check_split(split) != 0:
        return np.arange(len(labels))
    rng = np.random.Generator(np.random.PCG64(_FASHION_SPLIT_SEED))
    picked = [rng.permutation(np.flatnonzero(labels == c))[:_FASHION_PER_CLASS] for c in range(10)]
    return np.sort(np.concatenate(picked))


@lru_cache(maxsize=2)
def _fashion_bank(split: str) -> _Bank:
    """Garment photographs (appearance) and their filled silhouettes, as digits' fields are laid out."""
    from scipy import ndimage  # only garments need it; digits never import scipy

    from convrnn.data.fashion import load_fashion_mnist

    images, labels = load_fashion_mnist("train" if _check_split(split) == 0 else "test")
    idx = _fashion_indices(split, labels)
    images, labels = images[idx], labels[idx]
    # A garment's silhouette: its inked pixels with the holes filled (dark prints inside a shirt are still
    # shirt), so it hides what lies behind it everywhere inside its outline.
    solid = np.stack([ndimage.binary_fill_holes(im > _FASHION_INK) for im in images]).astype(np.float32)
    peak = np.maximum(images.reshape(len(images), -1).max(axis=1), 1).astype(np.float32)
    look = images.astype(np.float32) / peak[:, None, None]
    margin = (FIELD - _FASHION_SIZE) // 2 + _BORDER  # centre the photograph in the padded field
    pad = ((0, 0), (margin, margin), (margin, margin))
    look = np.pad(look, pad)
    mask = np.clip(_blur_stack(np.pad(solid, pad), 0.7), 0, 1)
    assert look.size < 2**24, "flat indices must stay exact in float32 (see _render)"
    table = _class_table(labels, 0)
    return _Bank(
        flat=np.ascontiguousarray(look, np.float32).reshape(-1),
        origin=idx,
        hand=table,
        font=table,  # no font for garments: "source" picks from the one pool either way
        glyph=_FASHION_SIZE,
        mask=np.ascontiguousarray(mask, np.float32).reshape(-1),
    )


# ----------------------------------------------------------------------------------------------------------------
# Drawing: m digits at once, each an affine view of a field, soft-thresholded into stroke and outline.


@dataclass
class _Digits:
    """Random draws for m digits (one per image in a batch of images)."""

    field: np.ndarray  # (m,) bank index
    center: np.ndarray  # (m, 2) x, y in canvas px
    inverse: np.ndarray  # (m, 2, 2) canvas px -> field px
    scale: np.ndarray  # (m,) canvas px per field px
    threshold: np.ndarray  # (m,)
    crop: np.ndarray | None = None  # (m, 4) u0, v0, u1, v1 in padded field px, for fragments


def _draw_digits(
    rng: np.random.Generator,
    bank: _Bank,
    cfg: ClutterConfig,
    labels: np.ndarray,
    height: np.ndarray,
    center: np.ndarray,
) -> _Digits:
    """Pick exemplars and random pose and stroke for digits of the given classes, heights and centres (px)."""
    m = len(labels)
    use_font = {"handwritten": np.zeros(m, bool), "font": np.ones(m, bool)}.get(cfg.source)
    if use_font is None:
        use_font = rng.random(m) < 0.5
    field = bank.pick(rng, labels, use_font)
    angle = rng.uniform(-cfg.rotation, cfg.rotation, m) * (math.pi / 180)
    shear = rng.uniform(-cfg.shear, cfg.shear, m)
    aspect = rng.uniform(*cfg.aspect, m)
    threshold = rng.uniform(*cfg.stroke, m)
    scale = height / bank.glyph
    # Forward map field -> canvas: scale * R(angle) @ [[1, shear], [0, 1]] @ diag(aspect, 1). Its inverse,
    # diag(1/aspect, 1) @ [[1, -shear], [0, 1]] @ R(-angle) / scale, is written out element by element: plain
    # IEEE ops rather than a (BLAS) matmul, and math.cos/sin rather than numpy's CPU-dependent vector kernels,
    # so the same draws give the same bits on every machine.
    cos = np.array([math.cos(a) for a in angle])
    sin = np.array([math.sin(a) for a in angle])
    inverse = np.empty((m, 2, 2))
    inverse[:, 0, 0] = (cos + shear * sin) / aspect / scale
    inverse[:, 0, 1] = (sin - shear * cos) / aspect / scale
    inverse[:, 1, 0] = -sin / scale
    inverse[:, 1, 1] = cos / scale
    return _Digits(field, center.astype(np.float64), inverse, scale, threshold)


def _bilinear(flat: np.ndarray, idx: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup in the padded fields ``flat`` at top-left flat indices ``idx`` with weights (u, v).

    ``idx`` is shifted in place to each neighbour in turn (cheaper than four index arrays) and restored.
    """
    top = flat.take(idx)
    idx += 1
    right = flat.take(idx)
    right -= top
    right *= u
    top += right  # top row, interpolated along u
    idx += _PAD
    bottom = flat.take(idx)
    idx -= 1
    left = flat.take(idx)
    bottom -= left
    bottom *= u
    bottom += left  # bottom row
    bottom -= top
    bottom *= v
    top += bottom
    idx -= _PAD
    return top


def _render(d: _Digits, bank: _Bank, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stroke (fill), stroke+outline (cover) and solid-body maps of m objects, each (m, size, size) float32
    in [0, 1]. For digits the body is the stroke itself; for garments, the filled silhouette."""
    # Field coordinates of every canvas pixel centre. The map is affine, so u = (a * x) + (b * y + c): two
    # small outer terms and one full-size add instead of four full-size passes.
    px = np.arange(size, dtype=np.float32) + np.float32(0.5)
    dx = px[None, :] - d.center[:, 0, None].astype(np.float32)  # (m, W)
    dy = px[None, :] - d.center[:, 1, None].astype(np.float32)  # (m, H)
    inv = d.inverse.astype(np.float32)
    mid = np.float32(FIELD / 2 + _BORDER - 0.5)  # field centre in padded-array index units (pixel centres at i + 0.5)
    u = (inv[:, 0, 0, None] * dx)[:, None, :] + (inv[:, 0, 1, None] * dy + mid)[:, :, None]
    v = (inv[:, 1, 0, None] * dx)[:, None, :] + (inv[:, 1, 1, None] * dy + mid)[:, :, None]
    # Off the field: clamp into the zero border (2 px wide, so both bilinear neighbours are 0 there).
    np.clip(u, 0, _PAD - 2, out=u)
    np.clip(v, 0, _PAD - 2, out=v)
    keep = None
    if d.crop is not None:  # a fragment: only the ink inside its crop rectangle (field coordinates)
        c = d.crop.astype(np.float32)[:, :, None, None]
        keep = (u >= c[:, 0]) & (u < c[:, 2]) & (v >= c[:, 1]) & (v < c[:, 3])
    # Bilinear lookup. Float floor and float index arithmetic (exact: indices < 2**24) are several times
    # faster in numpy than int casts and mixed int/float ops; one cast to intp at the end.
    u0 = np.floor(u)
    v0 = np.floor(v)
    u -= u0  # now the bilinear weights
    v -= v0
    v0 *= np.float32(_PAD)
    v0 += u0
    v0 += (d.field * (_PAD * _PAD)).astype(np.float32)[:, None, None]
    idx = v0.astype(np.intp)  # flat index of the top-left neighbour
    del u0, v0
    ink = _bilinear(bank.flat, idx, u, v)
    if keep is not None:
        ink *= keep
    if bank.mask is not None:  # garments: the silhouette, cut to the same fragment
        solid = _bilinear(bank.mask, idx, u, v)
        if keep is not None:
            solid *= keep
        return _garments(d, solid, ink)
    # Soft threshold with a slope that keeps edges ~1 canvas px wide at any scale; the outline is the same
    # field thresholded lower. The slope has a floor so that blank field (ink 0) stays exactly 0 in both.
    t = d.threshold.astype(np.float32)
    outline = np.minimum(np.float32(_OUTLINE), t / 2)
    slope = np.maximum(np.float32(_EDGE) * d.scale.astype(np.float32), np.float32(0.5) / (t - outline))
    ink -= t[:, None, None]
    ink *= slope[:, None, None]
    ink += np.float32(0.5)
    cover = ink + (outline * slope)[:, None, None]
    np.clip(ink, 0, 1, out=ink)
    np.clip(cover, 0, 1, out=cover)
    return ink, cover, ink


def _garments(d: _Digits, solid: np.ndarray, look: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_render` for garments: the silhouette field ``solid`` thresholded at one half (body) and lower
    (outline), as a digit's ink field is, and the photograph ``look`` shown inside the body."""
    t = np.float32(0.5)
    outline = np.float32(_OUTLINE)
    slope = np.maximum(np.float32(_EDGE) * d.scale.astype(np.float32), np.float32(0.5) / (t - outline))[:, None, None]
    body = np.clip((solid - t) * slope + np.float32(0.5), 0, 1)
    cover = np.clip((solid - t + outline) * slope + np.float32(0.5), 0, 1)
    return look * body, cover, body


def _paint(canvas: np.ndarray, fill: np.ndarray, cover: np.ndarray, intensity: np.ndarray) -> None:
    """Painter's algorithm: the digit's outline hides what is under it, its stroke adds its intensity."""
    canvas *= 1 - cover
    canvas += intensity.astype(np.float32)[:, None, None] * fill


def _chunk(rng: np.random.Generator, bank: _Bank, cfg: ClutterConfig, n: int) -> dict[str, np.ndarray]:
    """Render n images; returns images (n, S, S) float32 in [0, 1], labels and per-image bookkeeping."""
    size = cfg.image_size
    canvas = np.zeros((n, size, size), np.float32)
    labels = rng.integers(0, 10, n)

    # Target: its height first, since every other size is relative to it; centred so that at most ~10% of its
    # height leaves the frame (unrotated).
    height = rng.uniform(*cfg.target_scale, n) * size
    margin = np.minimum(0.4 * height, size / 2)
    center = margin[:, None] + rng.random((n, 2)) * (size - 2 * margin)[:, None]
    target = _draw_digits(rng, bank, cfg, labels, height, center)

    for _ in range(cfg.distractors):  # behind the target: drawn first
        h = height * rng.uniform(*cfg.distractor_scale, n)
        c = rng.random((n, 2)) * size
        fill, cover, _ = _render(_draw_digits(rng, bank, cfg, rng.integers(0, 10, n), h, c), bank, size)
        _paint(canvas, fill, cover, rng.uniform(*cfg.distractor_intensity, n))

    fill, cover, solid = _render(target, bank, size)
    _paint(canvas, fill, cover, np.ones(n))
    # Occlusion is measured on the target's stroke pixels (a garment's silhouette): one counts as hidden once
    # the debris outlines over it have taken away more than half of its brightness (visible < 0.5, painter's).
    stroke = solid >= 0.5
    n_stroke = np.maximum(stroke.sum(axis=(1, 2)), 1)
    visible = np.ones_like(fill)
    n_debris = np.zeros(n, np.int64)

    for _ in range(cfg.debris):  # in front: each one re-drawn until the target stays visible enough
        pending = np.arange(n)
        for _try in range(_MAX_TRIES):
            k = len(pending)
            h = height[pending] * rng.uniform(*cfg.debris_scale, k)
            c = rng.random((k, 2)) * size
            d = _draw_digits(rng, bank, cfg, rng.integers(0, 10, k), h, c)
            side = rng.uniform(*cfg.fragment, (k, 2)) * FIELD
            corner = _BORDER + rng.random((k, 2)) * (FIELD - side)
            d.crop = np.concatenate([corner, corner + side], axis=1)
            intensity = rng.uniform(*cfg.debris_intensity, k)
            fill, cover, _ = _render(d, bank, size)
            now_visible = visible[pending] * (1 - cover)
            frac = (stroke[pending] & (now_visible < 0.5)).sum(axis=(1, 2)) / n_stroke[pending]
            ok = frac <= cfg.occlusion
            idx = pending[ok]
            sub = canvas[idx]
            _paint(sub, fill[ok], cover[ok], intensity[ok])
            canvas[idx] = sub
            visible[idx] = now_visible[ok]
            n_debris[idx] += 1
            pending = pending[~ok]
            if not len(pending):
                break

    return {
        "images": canvas,
        "labels": labels.astype(np.int64),
        "exemplar": bank.origin[target.field],
        "occluded": (stroke & (visible < 0.5)).sum(axis=(1, 2)) / n_stroke,
        "debris": n_debris,
    }


def _cpu_count() -> int:
    """CPUs this process may use (affinity-aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _generate(n: int, seed: int, split: str, config: ClutterConfig) -> dict[str, np.ndarray]:
    """:func:`generate` plus bookkeeping per image: ``exemplar`` (the target's ``load_digits`` index, -1 for a
    font glyph), ``occluded`` (fraction of its stroke pixels hidden by debris), ``debris`` (fragments drawn)."""
    which = _check_split(split)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(config, ClutterConfig):
        raise TypeError(f"config must be a ClutterConfig, got {type(config).__name__}")
    bank = _bank(split, config.objects)
    # Chunks of about _CHUNK_PIXELS pixels, each with its own random stream derived from (seed, split, chunk):
    # chunks are independent, so a thread pool renders them in parallel (numpy releases the GIL) and the
    # images do not depend on how many threads there are. Train, val and test get unrelated streams (the split's
    # index in SPLITS is part of the seed: train and val keep the streams they had before "test" was added).
    per_chunk = max(1, _CHUNK_PIXELS // config.image_size**2)
    sizes = [min(per_chunk, n - start) for start in range(0, n, per_chunk)] or [0]

    def work(i: int) -> dict[str, np.ndarray]:
        seq = np.random.SeedSequence([int(seed), which, GENERATOR_VERSION, i])
        return _chunk(np.random.Generator(np.random.PCG64(seq)), bank, config, sizes[i])

    threads = min(len(sizes), _cpu_count())
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(work, range(len(sizes))))
    else:
        parts = [work(i) for i in range(len(sizes))]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # Quantise: rint of (x * 255) is exact IEEE arithmetic, so the bytes match across machines.
    out["images"] = np.rint(np.clip(out["images"], 0, 1) * np.float32(255)).astype(np.uint8)
    return out


def generate(
    n: int, seed: int, split: str = "train", config: ClutterConfig = ClutterConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cluttered-digit images, uint8 (n, H, W) with background 0, and their int64 labels (n,).

    The same (n, seed, split, config) gives byte-identical arrays. ``split`` is "train", "val" or "test": each
    its own random stream; "val" and "test" draw the handwritten exemplars (garments: photographs) held out from
    "train".
    """
    out = _generate(n, seed, split, config)
    return out["images"], out["labels"]


def classes(config: ClutterConfig = ClutterConfig()) -> list[str]:
    """The class names of the images ``config`` draws: digits "0".."9", or the Fashion-MNIST garments."""
    return list(CLASSES if config.objects == "digits" else FASHION_CLASSES)


# ----------------------------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    """``$CONVRNN_CACHE`` if set, else ``~/.cache/convrnn``."""
    env = os.environ.get("CONVRNN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "convrnn"


@lru_cache(maxsize=4)
def _fashion_fingerprint(split: str, folder: str) -> str:
    """The hash of the Fashion-MNIST files a split draws from (read once per process and folder; :func:`_knobs`
    passes "test" as "val", which reads the same files)."""
    from convrnn.data.fashion import fashion_fingerprint

    return fashion_fingerprint("train" if _check_split(split) == 0 else "test", folder)


def _knobs(split: str, n: int, seed: int, config: ClutterConfig) -> str:
    """Every input the images depend on, as canonical JSON (the cache key is its hash)."""
    try:  # package metadata, not an import: a cache hit must not pay for importing sklearn
        sklearn_version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        sklearn_version = None
    knobs = {
        "generator": "convrnn.data.clutter",
        "version": GENERATOR_VERSION,
        "split": split,
        "n": int(n),
        "seed": int(seed),
        "config": asdict(config),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "sklearn": sklearn_version,
    }
    if config.objects == "digits":
        # Digit images are what they were before the knob existed: keep their cache keys too.
        del knobs["config"]["objects"]
    else:
        from convrnn.data.fashion import fashion_dir

        knobs["fashion"] = _fashion_fingerprint(_pool(split), str(fashion_dir()))
        knobs["scipy"] = importlib.metadata.version("scipy")
    return json.dumps(knobs, sort_keys=True)


def cache_path(
    split: str, n: int, seed: int = 0, config: ClutterConfig = ClutterConfig(), cache_dir: str | Path | None = None
) -> Path:
    """Where :func:`load_clutter` keeps these images."""
    _check_split(split)
    digest = hashlib.sha256(_knobs(split, n, seed, config).encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    kind = "clutter" if config.objects == "digits" else f"clutter-{config.objects}"
    return root / f"{kind}-{split}-{config.image_size}px-n{n}-s{seed}-{digest}.npz"


# What a cache file holds besides ``knobs``, and each array's dtype.
_ARRAYS = {"images": np.uint8, "labels": np.int64, "occluded": np.float32, "debris": np.int64, "exemplar": np.int64}
_META = ("occluded", "debris", "exemplar")


def _read(path: Path, knobs: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the file is missing, unreadable, for other knobs, or lacks an array (a
    file written before the meta arrays were cached holds only images and labels: it is regenerated)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["knobs"]) != knobs:
                return None
            out = {k: z[k] for k in _ARRAYS}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    n = len(out["labels"])
    for k, dtype in _ARRAYS.items():
        a = out[k]
        if a.dtype != dtype or a.ndim != (3 if k == "images" else 1) or len(a) != n:
            return None
    return out


def _write(path: Path, arrays: dict[str, np.ndarray], knobs: str) -> None:
    """Save ``arrays`` and ``knobs`` under a temporary name, then rename: a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays, knobs=np.array(knobs))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_clutter_meta(
    split: str,
    n: int,
    seed: int = 0,
    config: ClutterConfig = ClutterConfig(),
    cache_dir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """The images of :func:`load_clutter` with what made each one hard, from the same cache file.

    Returns ``images`` (uint8 (n, H, W)), ``labels`` (int64 (n,)) and, per image, ``occluded`` (float32: the
    fraction of the target's stroke pixels, a garment's silhouette pixels, hidden by debris; at most
    ``config.occlusion`` up to float32 rounding), ``debris`` (int64: fragments drawn, at most ``config.debris``;
    fewer where a fragment would have hidden too much) and ``exemplar`` (int64: the target's index in
    ``sklearn.datasets.load_digits()``, -1 for a font glyph; garments: its index in the Fashion-MNIST file the
    split draws from). A cache file that lacks the meta arrays (written by an older version) is regenerated.
    """
    path = cache_path(split, n, seed, config, cache_dir)
    knobs = _knobs(split, n, seed, config)
    cached = _read(path, knobs)
    if cached is not None:
        return cached
    out = _generate(n, seed, split, config)
    arrays = {k: np.ascontiguousarray(out[k], dtype=dtype) for k, dtype in _ARRAYS.items()}
    _write(path, arrays, knobs)
    return arrays


def load_clutter(
    split: str,
    n: int,
    seed: int = 0,
    config: ClutterConfig = ClutterConfig(),
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`generate`, cached on disk: the first call writes an ``.npz``, later calls load it.

    The file (uint8 ``images``, int64 ``labels``, the meta arrays of :func:`load_clutter_meta`, ``knobs`` JSON)
    is named by a hash of every knob and written under a temporary name then renamed, so a reader never sees a
    partial file and concurrent writers are safe.
    """
    out = load_clutter_meta(split, n, seed, config, cache_dir)
    return out["images"], out["labels"]


class ClutterDataset(Dataset):
    """Cluttered digits (or garments) as a torch dataset: (float32 (3, H, W) ImageNet-normalised image, label).

    The gray image is scaled to [0, 1], replicated to 3 channels and normalised with the ImageNet mean and
    std, like every other input to the models. Images come from :func:`load_clutter_meta` (cached on disk);
    ``meta`` holds its per-image ``occluded``, ``debris`` and ``exemplar`` arrays, for analysis by difficulty.
    """

    classes: list[str]
    meta: dict[str, np.ndarray]

    def __init__(
        self,
        split: str,
        n: int,
        seed: int = 0,
        config: ClutterConfig = ClutterConfig(),
        cache_dir: str | Path | None = None,
    ) -> None:
        self.split, self.config = split, config
        out = load_clutter_meta(split, n, seed, config, cache_dir)
        self.images, self.labels = out["images"], out["labels"]
        self.meta = {k: out[k] for k in _META}  # per image: occluded, debris, exemplar (see load_clutter_meta)
        self.classes = classes(config)
        self.targets = self.labels.tolist()
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        gray = torch.from_numpy(self.images[i]).to(torch.float32).div_(255)
        return (gray.expand(3, -1, -1) - self._mean) / self._std, int(self.labels[i])
