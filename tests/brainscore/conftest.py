"""Brain-Score tests: real photographs from scikit-image, a tiny model, and an offline Brain-Score.

Brain-Score caches results and fetches data under ``BRAINIO_HOME``/``TMPDIR``; they point at a
temporary folder here, and caching is off, so nothing outside the test's folders is read or written.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convrnn

_HOME = tempfile.mkdtemp(prefix="convrnn-brainscore-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["RESULTCACHING_DISABLE"] = "1"
os.environ["BRAINIO_HOME"] = _HOME
os.environ["TMPDIR"] = _HOME
os.environ.setdefault("BS_INSTALL_DEPENDENCIES", "no")  # never pip-install a plugin's requirements

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
PHOTO_PX = 48  # small files; the model sees them at its own 32 px


def photo_files(folder: Path, mirrored: bool = False) -> list[Path]:
    """scikit-image's photographs (and their mirror images), shrunk and saved as PNG files."""
    skdata = pytest.importorskip("skimage.data", reason="the photographs come from scikit-image")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        img = Image.fromarray(np.asarray(getattr(skdata, name)())).convert("RGB").resize((PHOTO_PX, PHOTO_PX))
        versions = [(name, img)] + ([(f"{name}_mirror", img.transpose(Image.FLIP_LEFT_RIGHT))] if mirrored else [])
        for stem, version in versions:
            path = folder / f"{stem}.png"
            version.save(path)
            paths.append(path)
    return paths


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return photo_files(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def photos_and_mirrors(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return photo_files(tmp_path_factory.mktemp("photos_mirrored"), mirrored=True)


def tiny_model(num_classes: int = 10, seed: int = 0) -> convrnn.ConvRNN:
    torch.manual_seed(seed)
    return convrnn.create_model("rgc_shallow", num_classes=num_classes, image_size=32, width=0.125).eval()


@pytest.fixture(scope="session")
def make_model() -> Callable[..., convrnn.ConvRNN]:
    """``make_model(num_classes=10, seed=0)``: a seeded quarter-size rgc_shallow at 32 px."""
    return tiny_model


@pytest.fixture(scope="session")
def model() -> convrnn.ConvRNN:
    return tiny_model()
