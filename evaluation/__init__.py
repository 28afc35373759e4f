"""Evaluation of generated data and trained models: safety, over-refusal, utility, diversity.

- :mod:`evaluation.data`: loaders (prompt sets, CatQA, BeaverTails, MMLU);
- :mod:`evaluation.safety` and :mod:`evaluation.judges`: responses and their safety judgments;
- :mod:`evaluation.utility`: MMLU accuracy; :mod:`evaluation.diversity`: distinct-n and more;
- :mod:`evaluation.identity`: what determines a result (the keys of its caches);
- :mod:`evaluation.results`: the result files (one dataclass per kind), their names and reader;
- :mod:`evaluation.report`: tables and plots from result files;
- :mod:`evaluation.cli`: the ``eval`` and ``report`` commands.

Layer: uses tools/ only, never the graph, the nodes, training or the experiment; the
:mod:`experiment` package above runs it.
"""
