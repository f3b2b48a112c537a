"""Atomic writes, and JSON that standard parsers read (no bare NaN)."""

import json
import math

import numpy as np
import pytest

from convrnn.files import json_safe, write_json


def test_write_json_holds_no_bare_nan_and_replaces_atomically(tmp_path):
    path = tmp_path / "out.json"
    data = {"r": float("nan"), "p": np.float64(np.inf), "ms": np.array([1.5, np.nan]), "n": np.int64(3), "s": "x"}
    write_json(path, data)
    text = path.read_text()
    got = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text}"))
    assert got == {"r": None, "p": None, "ms": [1.5, None], "n": 3, "s": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind
    assert json_safe([(1.0, math.nan)]) == [[1.0, None]]
