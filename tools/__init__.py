"""The outside world: LLM endpoints, the embedded vLLM server, the default model, the run store."""
