"""Training data: the built-in task or an ImageNet-layout folder, with a resumable, shardable order.

Exact resume needs the data order and every augmentation to be a function of (seed, epoch, position)
alone, not of a random state that a crash would lose. So:

- :class:`ResumableBatchSampler` draws epoch e's order as a permutation seeded by (seed, e), cuts it
  into global batches, gives each process its slice of every global batch, and can start mid-epoch.
- Each sample carries its own augmentation seed, derived from (seed, epoch, position); the
  random-resized crop and flip draw from a generator seeded with it (independent of worker count).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import functional as TF

from convrnn.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageError, ImageFolder, eval_transform, load_image

# The built-in tasks by ``--data`` name: the cluttered-image generator's object source for each.
BUILTIN_TASKS = {"clutter": "digits", "clutter-fashion": "fashion"}


def builtin_task(data: str) -> dict | None:
    """The generator knobs of a built-in task, or None if ``data`` names none (it is then a folder).

    ``data`` is a task name, optionally followed by ``:`` and a YAML mapping of generator knobs, e.g.
    ``clutter-fashion:{debris: 10, occlusion: 0.5}``: the whole task is one string, so a run's
    ``config.yaml`` records it and a resumed run with other knobs is refused like any other change.
    """
    name, sep, rest = data.partition(":")
    if name not in BUILTIN_TASKS:
        return None
    import yaml

    from convrnn.data.clutter import ClutterConfig

    try:
        knobs = yaml.safe_load(rest) if sep else {}
    except yaml.YAMLError:
        knobs = None
    if not isinstance(knobs, dict):
        raise ValueError(f"--data {data!r}: after ':' comes a YAML mapping of knobs, e.g. {name}:{{debris: 10}}")
    allowed = [f.name for f in dataclasses.fields(ClutterConfig) if f.name not in ("image_size", "objects")]
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise ValueError(f"--data {data!r}: unknown knob(s) {', '.join(unknown)}; knobs: {', '.join(allowed)}")
    return {**knobs, "objects": BUILTIN_TASKS[name]}


def default_image_size(data: str) -> int:
    """32 px for the built-in tasks, 224 (the reference's) for image folders."""
    return 32 if data.partition(":")[0] in BUILTIN_TASKS else 224


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (dataset index, augmentation seed) for one process, in a seeded per-epoch order.

    ``batch_size`` is the global batch; process ``rank`` of ``world`` gets its ``batch_size // world``
    share of each. The last incomplete global batch is dropped (every step sees a full batch).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size % world:
            raise ValueError(f"batch_size: {batch_size} does not split evenly over {world} processes")
        if n < batch_size:
            raise ValueError(f"the training set has {n} images, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start_batch, self.rank, self.world, self.shuffle = epoch, start_batch, rank, world, shuffle

    def __len__(self) -> int:
        return self.n // self.batch_size - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        local = self.batch_size // self.world
        for b in range(self.start_batch, self.n // self.batch_size):
            lo = b * self.batch_size + self.rank * local
            yield [(int(order[p]), sample_seed(self.seed, self.epoch, p)) for p in range(lo, lo + local)]


class TrainFolder(Dataset):
    """An ImageNet-layout ``train/`` folder with the reference's training augmentation.

    Random-resized crop (scale 0.08-1, ratio 3/4-4/3) to ``image_size`` and a horizontal flip, drawn
    from the sample's own seed; ImageNet mean/std. Unreadable files raise :class:`ImageError` naming
    the file, or, with ``skip_bad``, are replaced by the next readable image; each sample reports how
    many files it skipped (as a third item), so the count survives worker processes.
    """

    def __init__(self, root: str | Path, image_size: int, skip_bad: bool = False) -> None:
        self.folder = ImageFolder(root)
        self.classes = self.folder.classes
        self.image_size, self.skip_bad = image_size, skip_bad

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int]:
        index, seed = key
        for k in range(len(self.folder)):
            path, label = self.folder.samples[(index + k) % len(self.folder)]
            try:
                img = load_image(path)
            except ImageError:
                if not self.skip_bad:
                    raise
                continue
            return self._augment(img, np.random.default_rng(seed)), label, k
        raise ImageError(f"no readable image in {str(self.folder.root)!r}")

    def _augment(self, img, rng: np.random.Generator) -> Tensor:
        w, h = img.size
        area = w * h
        i, j, ch, cw = 0, 0, h, w  # fallback: the whole image, as torchvision's after 10 misses
        for _ in range(10):
            target = area * rng.uniform(0.08, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw_, ch_ = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw_ <= w and 0 < ch_ <= h:
                i, j, ch, cw = int(rng.integers(0, h - ch_ + 1)), int(rng.integers(0, w - cw_ + 1)), ch_, cw_
                break
        img = TF.resized_crop(img, i, j, ch, cw, [self.image_size, self.image_size], antialias=True)
        if rng.random() < 0.5:
            img = TF.hflip(img)
        return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


class EvalFolder(Dataset):
    """An ImageNet-layout ``val/`` folder with the reference's evaluation preprocessing."""

    def __init__(self, root: str | Path, image_size: int) -> None:
        self.folder = ImageFolder(root, eval_transform(image_size))
        self.classes = self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Tensor, int]:
        return self.folder[key[0] if isinstance(key, tuple) else key]


class Keyed(Dataset):
    """Adapts a dataset indexed by int to the (index, seed) keys of the sampler (seed unused)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[Tensor, int]:
        return self.base[key[0] if isinstance(key, tuple) else key]


def build_datasets(
    data: str, image_size: int, seed: int, train_size: int, val_size: int, skip_bad: bool
) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names) for a built-in task (``clutter``: digits, ``clutter-fashion``: Fashion-MNIST
    garments; knobs as :func:`builtin_task` reads them) or an ImageNet-layout folder with train/ and val/."""
    knobs = builtin_task(data)
    if knobs is not None:
        from convrnn.data.clutter import ClutterConfig, ClutterDataset

        cfg = ClutterConfig(image_size=image_size, **knobs)
        train = ClutterDataset("train", train_size, seed=seed, config=cfg)
        val = ClutterDataset("val", val_size, seed=seed, config=cfg)
        return Keyed(train), Keyed(val), list(train.classes)
    root = Path(data)
    if not root.is_dir():
        raise ImageError(f"--data: {data!r} is neither a built-in task ({', '.join(BUILTIN_TASKS)}) nor a folder")
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise ImageError(f"--data: {data!r} is not ImageNet layout: no {' or '.join(missing)}/ folder of class folders")
    train = TrainFolder(root / "train", image_size, skip_bad=skip_bad)
    val = EvalFolder(root / "val", image_size)
    if train.classes != val.classes:
        extra = sorted(set(train.classes) ^ set(val.classes))[:5]
        raise ImageError(f"--data: train/ and val/ have different class folders (e.g. {extra})")
    return train, val, train.classes


def collate(batch: list[tuple]) -> tuple[Tensor, Tensor, int]:
    """Stack a batch; the third item counts the unreadable files skipped to fill it."""
    xs = torch.stack([b[0] for b in batch])
    ys = torch.tensor([b[1] for b in batch], dtype=torch.long)
    return xs, ys, sum(b[2] for b in batch if len(b) > 2)
