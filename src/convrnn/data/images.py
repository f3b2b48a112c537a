"""Images from files and ImageNet-layout folders, preprocessed as the reference evaluates.

Evaluation preprocessing (the reference's): resize the short side to ``image_size / 0.875`` (256 for
224), centre-crop ``image_size``, scale to [0, 1], normalise with the ImageNet mean and std.
Grayscale, palette, RGBA and CMYK files are converted to RGB. A file that cannot be read raises
:class:`ImageError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # 224 / 256
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageError(ValueError):
    """An image file or image folder cannot be used; the message names it."""


def eval_transform(image_size: int = 224) -> transforms.Compose:
    """Resize the short side to image_size / 0.875, centre-crop, to tensor, normalise."""
    return transforms.Compose(
        [
            transforms.Resize(round(image_size / CROP_FRACTION), interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; raise :class:`ImageError` naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"no such image file {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"cannot read image {str(path)!r}: {e}") from None


def load_images(paths: Sequence[str | Path], image_size: int) -> Tensor:
    """A normalised batch (B, 3, image_size, image_size) from image files."""
    tf = eval_transform(image_size)
    return torch.stack([tf(load_image(p)) for p in paths])


class ImageFolder(Dataset):
    """``root/<class>/<image>`` (e.g. an ImageNet ``val/`` folder): classes sorted by name.

    Raises :class:`ImageError` for a folder that is missing, holds no class folders, or holds an
    empty class folder.
    """

    def __init__(self, root: str | Path, transform: transforms.Compose | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ImageError(f"no such image folder {str(root)!r}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES][:3]
            hint = f" (it holds images such as {loose}: put each class in its own folder)" if loose else ""
            raise ImageError(f"{str(root)!r} holds no class folders{hint}")
        self.root, self.classes, self.transform = root, classes, transform
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageError(f"class folder {str(root / name)!r} holds no images")
            self.samples.extend((f, label) for f in files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        img = load_image(path)
        return (self.transform(img) if self.transform is not None else transforms.functional.to_tensor(img)), label
