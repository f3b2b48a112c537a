"""The released variants of the intermediate models: longer unrolls and temporal decoders.

- ``*_t22`` / ``*_t30``: trained on the image shown at every step (``constant`` presentation) for 22
  or 30 steps.
- ``*_dthresh``: the threshold decoder (first step whose max softmax probability reaches 0.9).
- ``*_tmaxconf``: the max-confidence decoder with a trainable softmax temperature.

Both decoders consider steps [num_layers, T) = [11, T), as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable

from convrnn.spec import ModelSpec, PresentationSpec, ReadoutSpec
from convrnn.zoo.intermediate import INTERMEDIATE_CELLS, residual_spec, rgc_intermediate
from convrnn.zoo.registry import register_model, released

DECODERS = {
    "": ReadoutSpec(),
    "dthresh": ReadoutSpec(decoder="threshold"),
    "tmaxconf": ReadoutSpec(decoder="max_conf", trainable=True),
}


def _variant(base: Callable[..., ModelSpec], name: str, times: int | None, decoder: str) -> Callable[..., ModelSpec]:
    def build(
        num_classes: int = 1000, image_size: int = 224, width: float = 1.0, times: int | None = times
    ) -> ModelSpec:
        spec = base(num_classes=num_classes, image_size=image_size, width=width)
        spec.name = name
        if times is not None:
            spec.times = times
        if "_t22" in name or "_t30" in name:
            spec.presentation = PresentationSpec("constant")
        spec.readout = ReadoutSpec(**vars(DECODERS[decoder]))
        return spec

    build.__doc__ = f"``{name}``: a released variant (see :mod:`convrnn.zoo.variants`)."
    return build


def _ugrnn(**kw) -> ModelSpec:
    return residual_spec("ugrnn_intermediate", INTERMEDIATE_CELLS["ugrnn"], **kw)


# name: (base builder, unroll steps, decoder, top-1 %)
VARIANTS = {
    "rgc_intermediate_dthresh": (rgc_intermediate, None, "dthresh", 71.81),
    "rgc_intermediate_tmaxconf": (rgc_intermediate, None, "tmaxconf", 72.29),
    "rgc_intermediate_t22_tmaxconf": (rgc_intermediate, 22, "tmaxconf", 72.98),
    "ugrnn_intermediate_t30": (_ugrnn, 30, "", 70.09),
    "ugrnn_intermediate_t30_dthresh": (_ugrnn, 30, "dthresh", 69.30),
    "ugrnn_intermediate_t30_tmaxconf": (_ugrnn, 30, "tmaxconf", 70.04),
}

for _name, (_base, _times, _decoder, _top1) in VARIANTS.items():
    _info = released(
        _name,
        _top1,
        presentation="constant" if _times else "default",
        decoder=DECODERS[_decoder].decoder,
    )
    register_model(_name, weights=_info)(_variant(_base, _name, _times, _decoder))
