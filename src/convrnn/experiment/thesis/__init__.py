"""``convrnn experiment thesis``: searched ConvRNNs against tuned, parameter-matched feedforward nets.

:mod:`~convrnn.experiment.thesis.protocol` (what is compared, fixed before the runs),
:mod:`~convrnn.experiment.thesis.plan` (arms matched to the budget, shared tuning candidates, cost),
:mod:`~convrnn.experiment.thesis.run` (tuning, search, final runs; resumable),
:mod:`~convrnn.experiment.thesis.report` (tables, paired differences, per-step and per-image analysis).
"""

from convrnn.experiment.thesis.protocol import ARMS, DEFAULT, QUICK, Protocol, ProtocolError

__all__ = ["ARMS", "DEFAULT", "QUICK", "Protocol", "ProtocolError"]
