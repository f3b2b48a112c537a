"""Writing files so that a reader never sees half of one: write to a temporary name, then rename."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "save_figure", "temporary_path", "write_json", "write_text"]


def temporary_path(path: Path) -> Path:
    """A hidden name beside ``path`` (same folder, so the final rename is atomic), keeping the suffix."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    tmp = temporary_path(path)
    tmp.write_text(text)
    tmp.replace(path)
    return path


def json_safe(x: Any) -> Any:
    """Plain data that standard JSON can hold: NaN and infinities (a Spearman r over too few images, the
    s.d. of one seed) become None, NumPy scalars and arrays become Python numbers and lists."""
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # NumPy scalars and arrays
        x = x.tolist()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    return x


def write_json(path: str | Path, data: Any, indent: int = 1) -> Path:
    """Write ``data`` as standard JSON (no bare NaN: see :func:`json_safe`), atomically."""
    return write_text(path, json.dumps(json_safe(data), indent=indent, allow_nan=False))


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, save atomically and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    tmp = temporary_path(path)
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path
