"""Data: stimulus presentation (and, later, datasets)."""
