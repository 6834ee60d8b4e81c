"""A local stand-in for a Hugging Face Hub that misbehaves, on 127.0.0.1 (``HF_ENDPOINT`` = ``url``).

:class:`FakeHub` serves repos each in one of two ways:

- ``"silent"``: it accepts the connection, reads the request and never answers;
- ``"cut"``: it answers the listing and the file metadata as the Hub does, then sends only the
  first half of every file and closes the connection.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``repos`` maps a repo id to ``(folder with its files, "silent" or "cut")``."""

    def __init__(self, repos: dict[str, tuple[Path | None, str]]) -> None:
        self.requests: list[str] = []
        self.closed = threading.Event()
        hub = self
        content = {repo: {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
                          if p.is_file()} if folder else {} for repo, (folder, _) in repos.items()}

        def find(path: str) -> tuple[str | None, str]:
            """(repo, rest of the path) of a request path."""
            for repo in repos:
                for prefix in (f"/api/models/{repo}", f"/{repo}/resolve/"):
                    if path.startswith(prefix):
                        return repo, path[len(prefix):]
            return None, ""

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _route(self) -> tuple[str | None, bytes | None]:
                """(repo, file content or None); a silent repo's request never returns."""
                hub.requests.append(f"{self.command} {self.path}")
                repo, rest = find(self.path)
                if repo is not None and repos[repo][1] == "silent":
                    hub.closed.wait()  # accepted and read, never answered
                    self.close_connection = True
                    return None, None
                if repo is None or self.path.startswith("/api/"):
                    return repo, None
                return repo, content[repo].get(rest.split("/", 1)[-1].split("?")[0])

            def _headers(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                _, data = self._route()
                if data is None:
                    self.send_error(404)
                    return
                self._headers(data)

            def do_GET(self) -> None:  # noqa: N802
                repo, data = self._route()
                if hub.closed.is_set():
                    return
                if repo is not None and self.path.startswith("/api/"):
                    body = json.dumps({"id": repo, "sha": COMMIT, "siblings": [
                        {"rfilename": f, "size": len(d)} for f, d in content[repo].items()]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if data is None:
                    self.send_error(404)
                    return
                self._headers(data)
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()
