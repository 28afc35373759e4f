"""The bottom layer: what every other package shares, importing none of them.

- :mod:`tools.llm`: LLM endpoints, the one client factory and the one concurrency helper;
- :mod:`tools.server`: the embedded vLLM server (an OpenAI-compatible child process);
- :mod:`tools.default_model`: the embedded default model (SmolLM2-135M-Instruct), its aliases
  and :func:`~tools.default_model.resolve_model`;
- :mod:`tools.store`: the run store (the dataset, the pool and per-round records, in SQLite);
- :mod:`tools.text`: text normalisation, n-grams and the duplicate filter;
- :mod:`tools.files`: user-given text and JSON read with one-line errors, JSONL, atomic writes;
- :mod:`tools.helpformat`: the ``--help`` format and the argument types of every command.

Layers (checked by import-linter, see ``pyproject.toml``): tools <- graph's state, context,
templates and seeds <- nodes <- graph's wiring, runner, export, Studio and commands <-
experiment; training and evaluation use tools only.
"""
