"""The generation graph, in two layers with the nodes between them.

Below the nodes (they import these): :mod:`graph.state` (the bounded graph state),
:mod:`graph.context` (the runtime context: endpoints per role, sampling, method settings),
:mod:`graph.templates` (the templates the nodes fill, shipped in ``graph/templates/``) and
:mod:`graph.seeds` (the default seeds, in ``graph/seeds/``).

Above the nodes: :mod:`graph.graph` (the wiring of the Data Advisor loop and the Self-Instruct
baseline), :mod:`graph.runner` (a run folder: checkpoints, the embedded server, progress),
:mod:`graph.export`, :mod:`graph.studio` (the `langgraph dev` graphs) and :mod:`graph.cli` (the
generation commands).

The package uses tools/ and nodes/ only; :mod:`experiment` sits above it.
"""
