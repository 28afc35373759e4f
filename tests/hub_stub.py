"""A loopback stand-in for the few Hugging Face Hub endpoints a small ``upload_folder`` uses.

``HfApi.create_repo`` posts to ``/api/repos/create``; ``upload_folder`` validates the card's
YAML (``/api/validate-yaml``), asks ``/preupload`` how to send each file (always answered
"regular": small files go inline in the commit, no LFS / Xet storage) and posts the NDJSON
commit (``/commit``). The stub records the requests and the committed files; any other request
is answered 404 and recorded, so a test can assert that nothing else was asked.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M",
                   "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T", "other"}


class HubStub:
    """The stub server on a free loopback port (``with HubStub() as hub: hub.url``)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        """Created repositories by id: the create request's JSON."""
        self.files: dict[str, dict[str, bytes]] = {}
        """Committed files by repository id, then path."""
        self.requests: list[tuple[str, str, str | None]] = []
        """Every request: method, path and its Authorization header."""
        self.unexpected: list[str] = []
        app = Starlette(routes=[
            Route("/api/repos/create", self._create, methods=["POST"]),
            Route("/api/validate-yaml", self._validate_yaml, methods=["POST"]),
            Route("/api/datasets/{ns}/{name}/preupload/{rev}", self._preupload, methods=["POST"]),
            Route("/api/datasets/{ns}/{name}/commit/{rev}", self._commit, methods=["POST"]),
            Route("/{path:path}", self._other, methods=["GET", "POST", "PUT", "HEAD", "DELETE"]),
        ], middleware=[Middleware(BaseHTTPMiddleware, dispatch=self._record)])
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> HubStub:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Hub stub did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    async def _record(self, request: Request, call_next: Any) -> Any:
        self.requests.append(
            (request.method, request.url.path, request.headers.get("authorization"))
        )
        return await call_next(request)

    async def _create(self, request: Request) -> JSONResponse:
        if not request.headers.get("authorization"):
            return JSONResponse({"error": "Invalid username or password."}, 401)
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}"
        if repo_id in self.repos:
            return JSONResponse({"error": "You already created this dataset repo"}, 409)
        self.repos[repo_id] = body
        return JSONResponse({"url": f"{self.url}/datasets/{repo_id}", "name": repo_id})

    async def _validate_yaml(self, request: Request) -> JSONResponse:
        content = (await request.json())["content"]
        header = content.split("---")[1] if content.startswith("---") else ""
        meta = yaml.safe_load(header) or {}
        bad = set(meta.get("size_categories") or []) - SIZE_CATEGORIES
        if not meta or bad:
            errors = [{"message": f"bad metadata: {sorted(bad) or 'none'}"}]
            return JSONResponse({"errors": errors}, 400)
        return JSONResponse({"warnings": []})

    async def _preupload(self, request: Request) -> JSONResponse:
        files = (await request.json())["files"]
        return JSONResponse({"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for f in files
        ]})

    async def _commit(self, request: Request) -> JSONResponse:
        p = request.path_params
        repo_id = f"{p['ns']}/{p['name']}"
        if repo_id not in self.repos:
            return JSONResponse({"error": "Repository not found"}, 404)
        stored = self.files.setdefault(repo_id, {})
        for line in (await request.body()).splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                value = item["value"]
                stored[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] != "header":
                self.unexpected.append(f"commit operation {item['key']}")
        oid = "0" * 40
        return JSONResponse({"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}",
                             "commitOid": oid})

    async def _other(self, request: Request) -> JSONResponse:
        self.unexpected.append(f"{request.method} {request.url.path}")
        return JSONResponse({"error": "not in the stub"}, 404)
