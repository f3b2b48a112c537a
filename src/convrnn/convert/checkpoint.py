"""Convert a reference TensorFlow checkpoint into a convrnn ``.safetensors`` weights file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

import convrnn
from convrnn.convert.tf_checkpoint import read_checkpoint
from convrnn.convert.tf_names import tf_to_state_dict
from convrnn.model import ConvRNN


def convert_checkpoint(prefix: str | Path, model: ConvRNN, out: str | Path, model_name: str | None = None) -> Path:
    """Read ``prefix.index`` + ``prefix.data-*`` (no TensorFlow), map every variable onto ``model``
    and write its weights to ``out`` atomically (temporary name, then rename), with metadata: the
    model name, the spec (JSON) and the source checkpoint.
    """
    tensors = read_checkpoint(prefix)
    state = tf_to_state_dict(model, tensors)
    return save_converted(state, model, out, model_name=model_name, source_checkpoint=Path(prefix).name)


def save_converted(
    state: Mapping[str, Tensor],
    model: ConvRNN,
    out: str | Path,
    *,
    model_name: str | None = None,
    source_checkpoint: str = "",
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write converted weights to ``out`` atomically, with the converter's metadata (model name, spec
    as JSON, source checkpoint) plus ``extra_metadata``; on any failure nothing is left at ``out``.
    """
    out = Path(out)
    metadata = {
        "format": "convrnn",
        "convrnn_version": convrnn.__version__,
        "model": model_name or model.spec.name,
        "source_checkpoint": source_checkpoint,
        "spec": json.dumps(model.spec.to_dict()),
        **(extra_metadata or {}),
    }
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
