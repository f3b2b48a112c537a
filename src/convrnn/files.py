"""Writing files so that a reader never sees half of one: write to a temporary name, then rename."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_figure", "temporary_path", "write_text"]


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
