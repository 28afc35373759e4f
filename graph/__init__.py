"""Graph state, runtime context, prompts, wiring and the `data-advisor` CLI."""
