import os
from pathlib import Path

import pytest
import torch

# Tests run on 2 cores; a fixed thread count keeps timings and reductions stable.
torch.set_num_threads(2)

REFERENCE_MODELS = (
    "rgc_shallow",
    "lstm_shallow",
    "timedecay_shallow",
    "ugrnn_shallow",
    "gru_shallow",
    "simplernn_shallow",
    "intersectionrnn_shallow",
    "rgc_intermediate",
    "ugrnn_intermediate",
)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``$CONVRNN_REFERENCE_DATA/tf``: what the reference TensorFlow implementation computes."""
    root = os.environ.get("CONVRNN_REFERENCE_DATA")
    if not root:
        pytest.skip("CONVRNN_REFERENCE_DATA is unset: no reference TensorFlow outputs to compare with")
    path = Path(root) / "tf"
    if not path.is_dir():
        pytest.fail(f"CONVRNN_REFERENCE_DATA={root!r} has no tf/ folder")
    return path
