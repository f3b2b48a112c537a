"""Architecture search (``convrnn search``): TPE over RGC cells, long-range feedback and optimiser
settings, with pruning, on a database that any number of workers share.

- :mod:`convrnn.search.space`: the search space as a YAML/JSON file; a trial's draw becomes a model spec.
- :mod:`convrnn.search.study`: storage, workers, heartbeats and retries; :func:`run_search`.
- :mod:`convrnn.search.objective`: one trial, trained with :func:`convrnn.train.trainer.train`.
- :mod:`convrnn.search.report`: best trials, the accuracy-size Pareto front, plots, spec export.
"""

from convrnn.search.space import DEFAULT_SPACE, SearchSpace, load_space
from convrnn.search.study import SearchConfig, StudyError, run_search

__all__ = ["DEFAULT_SPACE", "SearchConfig", "SearchSpace", "StudyError", "load_space", "run_search"]
