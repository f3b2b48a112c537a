"""Conversion of the reference's TensorFlow weights to convrnn."""

from convrnn.convert.tf_names import NameMapError, load_tf_weights, tf_to_state_dict

__all__ = ["NameMapError", "load_tf_weights", "tf_to_state_dict"]
