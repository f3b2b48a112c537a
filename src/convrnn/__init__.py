"""convrnn: task-driven convolutional recurrent models of the primate ventral stream, in PyTorch."""

from convrnn.cells import CELL_CONFIGS
from convrnn.errors import SpecError
from convrnn.model import ConvRNN, ConvRNNOutput
from convrnn.readout import decode
from convrnn.spec import EdgeSpec, LayerSpec, ModelSpec, PresentationSpec, ReadoutSpec
from convrnn.zoo import create_model, list_models, load_weights, model_spec, register_model

__version__ = "0.1.0"

__all__ = [
    "CELL_CONFIGS",
    "ConvRNN",
    "ConvRNNOutput",
    "EdgeSpec",
    "LayerSpec",
    "ModelSpec",
    "PresentationSpec",
    "ReadoutSpec",
    "SpecError",
    "create_model",
    "decode",
    "list_models",
    "load_weights",
    "model_spec",
    "register_model",
]
