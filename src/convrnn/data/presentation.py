"""Stimulus presentation: how images become a sequence of frames, one per time step (~10 ms).

- ``default``: the image for steps ``0 .. image_off-1`` (12 in the reference), then the blank.
- ``neural``: 26 steps, the image for steps 0-9 (100 ms on of 260 ms), then the blank.
- ``constant``: the image at every step.
- a video: a (B, T, C, H, W) tensor, frame t at step t.

The blank is a constant in *normalised* units (0.5 in the reference, which feeds it instead of the
normalised image, not a grey image passed through the normalisation). It is one frame shared by the
whole batch, a (1, C, H, W) tensor the network broadcasts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from convrnn.spec import PresentationSpec

NEURAL_TIMES = 26
NEURAL_IMAGE_OFF = 10


@dataclass
class Stimulus:
    """Frames over time for a batch; ``frame(t)`` is (B, C, H, W), or (1, C, H, W) when shared."""

    images: Tensor | None = None  # (B, C, H, W) still images
    video: Tensor | None = None  # (B, T, C, H, W)
    image_off: int | None = None  # first blank step (None: never blank)
    blank: float = 0.5
    _blank: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def batch(self) -> int:
        return (self.images if self.images is not None else self.video).shape[0]

    def frame(self, t: int) -> Tensor:
        if self.video is not None:
            if t >= self.video.shape[1]:
                raise ValueError(f"video has {self.video.shape[1]} frames; step {t} has none")
            return self.video[:, t]
        if self.image_off is not None and t >= self.image_off:
            return self._blank_frame()
        return self.images

    def _blank_frame(self) -> Tensor:
        # One tensor for every blank step: the unroller sees the repeat and reuses work.
        if self._blank is None:
            self._blank = torch.full(
                (1, *self.images.shape[1:]), self.blank, dtype=self.images.dtype, device=self.images.device
            )
        return self._blank


def make_stimulus(
    x: Tensor,
    presentation: PresentationSpec | str | None = None,
    *,
    image_off: int | None = None,
    blank: float | None = None,
    default: PresentationSpec | None = None,
) -> tuple[Stimulus, int | None]:
    """Turn images (B, C, H, W) or a video (B, T, C, H, W) into a :class:`Stimulus`.

    Returns the stimulus and the number of steps the presentation implies (``None`` where the
    caller must choose: ``default`` and ``constant`` take the model's default steps).
    """
    default = default or PresentationSpec()
    if x.dim() == 5:
        return Stimulus(video=x), x.shape[1]
    if x.dim() != 4:
        raise ValueError(f"images: expected (B, C, H, W) or a video (B, T, C, H, W), got shape {tuple(x.shape)}")
    if presentation is None:
        presentation = default
    if isinstance(presentation, str):
        kinds = ("default", "neural", "constant")
        if presentation not in kinds:
            raise ValueError(f"presentation: unknown {presentation!r} (known: {', '.join(kinds)})")
        presentation = PresentationSpec(kind=presentation, image_off=default.image_off, blank=default.blank)
    b = presentation.blank if blank is None else blank
    if presentation.kind == "constant":
        return Stimulus(images=x, image_off=None, blank=b), None
    if presentation.kind == "neural":
        off = NEURAL_IMAGE_OFF if image_off is None else image_off
        return Stimulus(images=x, image_off=off, blank=b), NEURAL_TIMES
    off = presentation.image_off if image_off is None else image_off
    return Stimulus(images=x, image_off=off, blank=b), None
