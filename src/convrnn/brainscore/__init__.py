"""Brain-Score for convrnn models: a ``BrainModel`` adapter and a plugin-folder writer.

``ConvRNNBrainModel`` (in :mod:`convrnn.brainscore.adapter`) needs ``brainscore_vision``, which pins old
numpy/xarray and so usually lives in an environment of its own; it is imported on first use, so
``import convrnn.brainscore`` (and the plugin writer, :func:`write_plugin`) works without it.
"""

from __future__ import annotations

from typing import Any

from convrnn.brainscore.plugin import PluginError, write_plugin
from convrnn.brainscore.timebins import TimeBinError, as_time_bins, steps_for_bins, time_bin_weights

__all__ = [
    "ConvRNNBrainModel",
    "PluginError",
    "TimeBinError",
    "as_time_bins",
    "default_region_layer_map",
    "steps_for_bins",
    "time_bin_weights",
    "write_plugin",
]

_LAZY = ("ConvRNNBrainModel", "default_region_layer_map")


def __getattr__(name: str) -> Any:
    # Deferred so that only code that uses the adapter pays for (and needs) brainscore_vision.
    if name in _LAZY:
        from convrnn.brainscore import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module 'convrnn.brainscore' has no attribute {name!r}")
