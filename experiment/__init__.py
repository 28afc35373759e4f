"""The paper's experiment and the ``data-advisor`` command: the top layer, above every package.

- :mod:`experiment.config`: the config schema (one dataclass per section), its defaults and
  :func:`~experiment.config.load_config`;
- :mod:`experiment.stages`: the five stages (generation, training, evaluation, diversity,
  report) and :func:`~experiment.stages.run_experiment`, which runs them into one folder and
  skips a stage whose output exists;
- :mod:`experiment.cli`: the ``data-advisor`` root parser and ``main`` (every package's
  commands, one-line errors) and the ``experiment`` command.

Nothing below (graph, nodes, tools, training, evaluation) imports this package.
"""

from experiment.config import ConfigError, ExperimentConfig, load_config
from experiment.stages import STAGES, ExperimentResult, run_experiment

__all__ = [
    "STAGES",
    "ConfigError",
    "ExperimentConfig",
    "ExperimentResult",
    "load_config",
    "run_experiment",
]
