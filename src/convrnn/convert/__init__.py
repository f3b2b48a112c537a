"""Conversion of the reference's TensorFlow weights to convrnn."""

from convrnn.convert.checkpoint import convert_checkpoint, save_converted
from convrnn.convert.tf_checkpoint import CheckpointError, read_checkpoint, read_index
from convrnn.convert.tf_names import NameMapError, load_tf_weights, tf_to_state_dict

__all__ = [
    "CheckpointError",
    "NameMapError",
    "convert_checkpoint",
    "load_tf_weights",
    "read_checkpoint",
    "read_index",
    "save_converted",
    "tf_to_state_dict",
]
