"""A small Hugging Face Hub on 127.0.0.1, for download tests that never leave the machine.

It serves the routes huggingface_hub uses for ``list_repo_tree`` and ``hf_hub_download`` (with ``ETag``,
``X-Repo-Commit``, ``X-Linked-Size`` and range requests) from files held in memory, and misbehaves on
request: drop a connection half-way, serve corrupted bytes, be slow, refuse a gated repository, send lying
headers (a commit id or ETag with ``../``), more bytes than it announced, or file names that leave the repo.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Behaviour:
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection drops (once)
    corrupt: set[str] = field(default_factory=set)  # paths served with one byte flipped
    delay_per_chunk: float = 0.0
    gated: set[str] = field(default_factory=set)  # repo ids
    chunk: int = 64 << 10
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> headers sent instead (lies)
    extra_bytes: dict[str, bytes] = field(default_factory=dict)  # path -> bytes sent beyond the advertised size
    tree_names: dict[str, str] = field(default_factory=dict)  # path -> the name the file listing gives instead


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.behaviour = Behaviour()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, path: str, data: bytes) -> str:
        self.repos.setdefault(repo_id, {})[path] = data
        return hashlib.sha256(data).hexdigest()

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self, path: str) -> list[str | None]:
        """The Range headers of every GET of a file."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + path)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, code: int, error_code: str, message: str) -> None:
                self._send(
                    code,
                    json.dumps({"error": message}).encode(),
                    {"X-Error-Code": error_code, "X-Error-Message": message},
                )

            def do_GET(self):
                self._route()

            def do_HEAD(self):
                self._route()

            def _route(self):
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                    return self._tree("/".join(parts[2:4]), "/".join(parts[6:]))
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._file("/".join(parts[:2]), "/".join(parts[4:]))
                self._error(404, "RepoNotFound", "not found")

            def _repo(self, repo_id: str) -> dict[str, bytes] | None:
                if repo_id in hub.behaviour.gated:
                    self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted.")
                    return None
                files = hub.repos.get(repo_id)
                if files is None:
                    self._error(401, "RepoNotFound", "Repository not found")
                return files

            def _tree(self, repo_id: str, prefix: str) -> None:
                files = self._repo(repo_id)
                if files is None:
                    return
                entries = []
                for p, data in sorted(files.items()):
                    if prefix and not p.startswith(prefix):
                        continue
                    sha = hashlib.sha256(data).hexdigest()
                    entries.append(
                        {
                            "type": "file",
                            "oid": hashlib.sha1(data).hexdigest(),
                            "size": len(data),
                            "path": hub.behaviour.tree_names.get(p, p),
                            "lfs": {"oid": sha, "size": len(data), "pointerSize": 134},
                        }
                    )
                self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})

            def _file(self, repo_id: str, path: str) -> None:
                files = self._repo(repo_id)
                if files is None:
                    return
                if path not in files:
                    return self._error(404, "EntryNotFound", f"{path} does not exist")
                data = files[path]
                sha = hashlib.sha256(data).hexdigest()
                headers = {
                    "ETag": f'"{sha}"',
                    "X-Repo-Commit": COMMIT,
                    "X-Linked-Size": str(len(data)),
                    "X-Linked-Etag": f'"{sha}"',
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                }
                headers.update(hub.behaviour.headers.get(path, {}))
                if path in hub.behaviour.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                data = data + hub.behaviour.extra_bytes.get(path, b"")
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                body = data[start:]
                self.send_response(206 if start else 200)
                for k, v in headers.items():
                    self.send_header(k, v)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                limit = hub.behaviour.drop_after.pop(path, None)
                sent = 0
                for i in range(0, len(body), hub.behaviour.chunk):
                    piece = body[i : i + hub.behaviour.chunk]
                    if limit is not None and sent + len(piece) > limit:
                        self.wfile.write(piece[: max(0, limit - sent)])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)  # drop it half-way, as a flaky network would
                        return
                    self.wfile.write(piece)
                    sent += len(piece)
                    if hub.behaviour.delay_per_chunk:
                        time.sleep(hub.behaviour.delay_per_chunk)

        return Handler
