"""Test doubles for the tests and benchmarks, never imported by the application.

:mod:`testing.stub_server` is a deterministic OpenAI-compatible server on loopback that answers
the app's templates like a model would, so that a whole run can be driven without one. Its
dependencies (starlette, uvicorn) come with the ``test`` extra.

Layer: beside the application, not in it: it imports no application package, and none imports
it (checked by import-linter).
"""
