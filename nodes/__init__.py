"""The Data Advisor nodes, one module per step of the method, with what they share.

:mod:`nodes.load_seeds`, :mod:`nodes.weakness_critic`, :mod:`nodes.generator`,
:mod:`nodes.summarizer`, :mod:`nodes.rule_check` and :mod:`nodes.responder` are the steps;
:mod:`nodes.filters` the junk filters and :mod:`nodes.common` the store, templates and
stopwatch every node uses.

Layer: above tools/ and graph's state, context, templates and seeds; below graph's wiring and
runner, which compile the nodes into a graph. Training and evaluation never import a node.
"""
