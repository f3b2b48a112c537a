"""Training and evaluation."""

from convrnn.train.evaluate import StepAccuracy, evaluate

__all__ = ["StepAccuracy", "evaluate"]
