"""Errors shared by every part of convrnn."""


class SpecError(ValueError):
    """A model spec is malformed; the message starts with the offending field."""
