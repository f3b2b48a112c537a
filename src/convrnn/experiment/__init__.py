"""Experiments that put the papers' claims to the test on data anyone can run (``convrnn experiment``)."""

from convrnn.experiment.cells import DEFAULT, QUICK, ExperimentError, Scale, plan, report, run

__all__ = ["DEFAULT", "QUICK", "ExperimentError", "Scale", "plan", "report", "run"]
