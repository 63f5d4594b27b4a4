"""A local stand-in for the Hugging Face hub, for tests (127.0.0.1 only, no network).

It serves folders as hub repositories with the URL layout and headers that
``huggingface_hub`` (``hf_hub_download``, ``snapshot_download``, ``HfApi.repo_info``,
``list_repo_tree``) relies on:

- ``HEAD|GET /{prefix}{repo_id}/resolve/{revision}/{path}`` -> the file, with ``X-Repo-Commit``,
  ``ETag`` (the file's sha256, as the hub does for LFS files) and ``Content-Length``;
  ``Range`` requests are honoured (resumed downloads). ``prefix`` is ``datasets/``,
  ``spaces/`` or empty for models.
- ``GET /api/{models|datasets|spaces}/{repo_id}[/revision/{revision}]`` -> repo info
  (``id``, ``sha``, ``siblings``).
- ``GET /api/{type}s/{repo_id}/tree/{revision}[/{path}]?recursive=true`` -> tree listing.
- Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so
  the client raises its specific exceptions.

A repository's revisions are ``main`` and its commit hash (a sha1 of its files' contents).
Every request is recorded in ``server.requests`` (method, path, headers) so tests can check
what a client sent (e.g. the Authorization header from ``HF_TOKEN``).

Usage::

    with HubServer() as hub:
        hub.add_repo("ceval/ceval-exam", folder, repo_type="dataset")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf")}
        subprocess.run([...], env=env)
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_PREFIXES = {"dataset": "datasets/", "space": "spaces/", "model": ""}


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    folder: Path
    commit: str
    files: dict[str, Path] = field(default_factory=dict)  # path in repo -> file on disk


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class HubServer:
    """Serve registered folders as hub repositories on ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[dict] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first (use it as a context manager)"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo_id: str, folder: str | Path, repo_type: str = "model") -> str:
        """Serve ``folder``'s files as ``repo_id``; return the repo's commit hash."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        digest = hashlib.sha1(repo_id.encode())
        for name, path in files.items():
            digest.update(name.encode() + b"\0" + _sha256(path).encode())
        repo = _Repo(repo_id=repo_id, repo_type=repo_type, folder=folder, commit=digest.hexdigest(), files=files)
        self.repos[(repo_type, repo_id)] = repo
        return repo.commit

    def __enter__(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # -- routing helpers -------------------------------------------------------------------
    def find_repo(self, repo_type: str, path: str) -> tuple[_Repo | None, str]:
        """The registered repo whose id starts ``path`` (longest match), and the rest of the path."""
        best = None
        for (kind, repo_id), repo in self.repos.items():
            if kind == repo_type and (path == repo_id or path.startswith(repo_id + "/")):
                if best is None or len(repo_id) > len(best.repo_id):
                    best = repo
        if best is None:
            return None, path
        return best, path[len(best.repo_id):].lstrip("/")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # keep test output quiet
        return

    # -- responses ---------------------------------------------------------------------------
    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _check_revision(self, repo: _Repo, revision: str) -> bool:
        if revision in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    # -- file downloads ----------------------------------------------------------------------
    def _resolve(self, repo_type: str, path: str) -> None:
        match = re.fullmatch(r"(.+?)/resolve/([^/]+)/(.+)", path)
        if not match:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        repo_id = unquote(match.group(1))
        repo, _ = self.hub.find_repo(repo_type, repo_id)
        if repo is None or repo.repo_id != repo_id:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        revision, filename = unquote(match.group(2)), unquote(match.group(3))
        if not self._check_revision(repo, revision):
            return
        local = repo.files.get(filename)
        if local is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist", commit=repo.commit)
            return
        size = local.stat().st_size
        start, end = 0, size - 1
        range_header = self.headers.get("Range")
        status = 200
        if range_header and self.command == "GET":
            range_match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if range_match:
                start = int(range_match.group(1))
                end = int(range_match.group(2)) if range_match.group(2) else size - 1
                status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{_sha256(local)}"')
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if self.command == "GET":
            with open(local, "rb") as handle:
                handle.seek(start)
                self.wfile.write(handle.read(end - start + 1))

    # -- API ---------------------------------------------------------------------------------
    def _api(self, path: str, query: dict) -> None:
        match = re.fullmatch(r"(models|datasets|spaces)/(.+)", path)
        if not match:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        repo_type = match.group(1)[:-1]
        repo, rest = self.hub.find_repo(repo_type, match.group(2))
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if rest == "" or rest.startswith("revision/"):
            revision = unquote(rest[len("revision/"):]) if rest else "main"
            if self._check_revision(repo, revision):
                siblings = [{"rfilename": name, "size": p.stat().st_size} for name, p in repo.files.items()]
                self._json({"id": repo.repo_id, "sha": repo.commit, "private": False, "siblings": siblings})
            return
        tree = re.fullmatch(r"tree/([^/]+)/?(.*)", rest)
        if tree:
            revision, folder = unquote(tree.group(1)), unquote(tree.group(2)).strip("/")
            if self._check_revision(repo, revision):
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                self._json(self._tree(repo, folder, recursive))
            return
        self._error(404, "EntryNotFound", f"unsupported API path {path}")

    def _tree(self, repo: _Repo, folder: str, recursive: bool) -> list[dict]:
        prefix = f"{folder}/" if folder else ""
        entries: dict[str, dict] = {}
        for name, local in repo.files.items():
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if "/" in rest:
                first = prefix + rest.split("/")[0]
                entries.setdefault(first, {"type": "directory", "path": first, "oid": hashlib.sha1(first.encode()).hexdigest()})
                if not recursive:
                    continue
                parts = rest.split("/")
                for depth in range(2, len(parts)):
                    sub = prefix + "/".join(parts[:depth])
                    entries.setdefault(sub, {"type": "directory", "path": sub, "oid": hashlib.sha1(sub.encode()).hexdigest()})
            entries[name] = {
                "type": "file",
                "path": name,
                "size": local.stat().st_size,
                "oid": hashlib.sha1(local.read_bytes()).hexdigest(),
            }
        return list(entries.values())

    # -- dispatch ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path.lstrip("/")  # still percent-encoded: pieces are decoded where split
        self.hub.requests.append({"method": self.command, "path": parts.path, "headers": dict(self.headers)})
        if path.startswith("api/"):
            self._api(path[len("api/"):], parse_qs(parts.query))
            return
        for repo_type, prefix in _PREFIXES.items():
            if prefix and path.startswith(prefix):
                self._resolve(repo_type, path[len(prefix):])
                return
        self._resolve("model", path)

    do_GET = _dispatch
    do_HEAD = _dispatch
