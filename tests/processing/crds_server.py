"""A loopback CRDS server (tests only): the JSON-RPC calls a CRDS client makes to sync a
context and the references a dataset needs (``get_server_info`` with the download metadata,
``get_mapping_names``), and the files under ``/unchecked_get/``, served from a local CRDS cache
(the synthetic program's). Methods called are logged in ``calls``; ``refuse`` lists contexts
whose mappings it does not know (a context that cannot be synced)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class CrdsServer:
    def __init__(self, cache: Path, context: str):
        self.cache = Path(cache)
        self.context = context
        self.calls: list[str] = []
        self.files: dict[str, Path] = {}
        for p in sorted((self.cache / "mappings" / "jwst").glob("*")) + sorted(
            (self.cache / "references" / "jwst").rglob("*")
        ):
            if p.is_file():
                self.files[p.name] = p

    def info(self) -> dict:
        from crds.client.proxy import crds_encode

        meta = {
            name: {"size": str(p.stat().st_size), "sha1sum": hashlib.sha1(p.read_bytes()).hexdigest()}
            for name, p in self.files.items()
        }
        return {
            "observatory": "jwst",
            "operational_context": self.context,
            "edit_context": self.context,
            "versions_context": self.context,
            "last_synced": "2026-12-07 00:00:00",
            "force_remote_mode": False,
            "crds_version": {"str": "14.0.3"},
            "mappings": [n for n in self.files if n.endswith("map")],
            "bad_files": "",
            "bad_files_list": [],
            "reference_url": {"jwst": self.url + "/unchecked_get/references/jwst/"},
            "mapping_url": {"jwst": self.url + "/unchecked_get/mappings/jwst/"},
            "download_metadata": crds_encode(meta),
        }

    def __enter__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body: bytes, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                method, params = body["method"], body.get("params", [])
                server.calls.append(method)
                result, error = None, None
                if method == "get_server_info":
                    result = server.info()
                elif method == "get_mapping_names":
                    if params and params[0] != server.context:
                        error = {"name": "CrdsError", "message": f"unknown context {params[0]}"}
                    else:
                        result = sorted(n for n in server.files if n.endswith("map"))
                elif method == "get_default_context":
                    result = server.context
                else:
                    error = {"name": "NotImplemented", "message": f"{method} is not served here"}
                self._send(200, json.dumps({"result": result, "error": error, "id": body.get("id")}).encode())

            def do_GET(self):
                server.calls.append("GET " + self.path)
                name = self.path.rstrip("/").rsplit("/", 1)[-1]
                if "/unchecked_get/" in self.path and name in server.files:
                    return self._send(200, server.files[name].read_bytes(), "application/octet-stream")
                if self.path in ("/", ""):
                    return self._send(200, b"CRDS", "text/plain")
                self._send(404, b"not found", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
