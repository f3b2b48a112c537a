"""The model zoo: every named model is a spec builder registered with :func:`register_model`."""

from convrnn.zoo import intermediate, shallow, variants  # noqa: F401  (registers the models)
from convrnn.zoo.registry import (
    CITATION,
    ModelEntry,
    WeightsInfo,
    create_model,
    list_models,
    load_weights,
    model_entry,
    model_spec,
    published_models,
    register_model,
)

__all__ = [
    "CITATION",
    "ModelEntry",
    "WeightsInfo",
    "create_model",
    "list_models",
    "load_weights",
    "model_entry",
    "model_spec",
    "published_models",
    "register_model",
]
