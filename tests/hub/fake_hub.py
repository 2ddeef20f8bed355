"""A loopback HTTP server speaking the subset of the Hub API that `huggingface_hub` uploads use.

Endpoints: whoami-v2, repos/create, validate-yaml, model info (optionally at a revision), refs,
branch creation, preupload (every file is "regular": test files stay small), ndjson commit with
inline base64 files, and pull requests (discussions). Repositories are kept in memory as a list of
commits per ref, each holding a full snapshot of the files, so tests can check exactly what
arrived, in which commit, with which message.

Faults: `go_down_after(n)` lets `n` more commits through, then drops the next connection without
an answer (the request body is read, nothing is applied) and answers 503 until `recover()`: what
a client sees when the Hub falls over mid-upload behind its load balancer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_REPO = r"/api/models/(?P<repo>[\w.-]+/[\w.-]+)"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]  # full snapshot after this commit
    changed: list[str]  # paths added or modified by this commit


@dataclass
class Repo:
    repo_id: str
    private: bool
    refs: dict[str, list[Commit]] = field(default_factory=dict)  # "main", "dev", "refs/pr/1" -> history
    prs: list[dict] = field(default_factory=list)

    def head(self, rev: str) -> Commit | None:
        rev = rev.removeprefix("refs/heads/")
        if rev in self.refs:
            return self.refs[rev][-1]
        return next((c for history in self.refs.values() for c in history if c.oid.startswith(rev)), None)


class FakeHub:
    """In-memory Hub. `tokens` maps token -> user name; `orgs` maps user -> organisations."""

    def __init__(self, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None) -> None:
        self.tokens, self.orgs = tokens, orgs or {}
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._commits_before_down: int | None = None
        self._down = False
        self._dropped = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ test controls
    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, private: bool = False) -> Repo:
        repo = Repo(repo_id, private)
        snapshot = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", **(files or {})}
        repo.refs["main"] = [self._make_commit(repo_id, "initial commit", snapshot, sorted(snapshot), None)]
        self.repos[repo_id] = repo
        return repo

    def go_down_after(self, commits: int) -> None:
        self._commits_before_down, self._down, self._dropped = commits, commits <= 0, False

    def recover(self) -> None:
        self._commits_before_down, self._down, self._dropped = None, False, False

    # ------------------------------------------------------------------ model
    @staticmethod
    def _make_commit(repo_id: str, message: str, files: dict[str, bytes], changed: list[str], parent: str | None) -> Commit:
        digest = hashlib.sha1(json.dumps([repo_id, parent, message, sorted(changed)]).encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_sha1(files[path]).encode())
        return Commit(digest.hexdigest(), message, files, changed)

    def _user(self, headers) -> str | None:
        auth = headers.get("authorization", "")
        return self.tokens.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None

    def _can_write(self, user: str | None, repo_id: str) -> bool:
        return user is not None and repo_id.split("/")[0] in {user, *self.orgs.get(user, [])}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _reply(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _dispatch(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                with hub._lock:
                    hub.requests.append((method, url.path))
                    if hub._down:
                        if not hub._dropped:
                            hub._dropped = True
                            self.close_connection = True
                            self.connection.shutdown(2)  # drop: no status line, no body
                            return
                        return self._reply(503, {"error": "Service Unavailable"}, {"Retry-After": "0"})
                    status, payload, headers = hub._route(method, url.path, query, body, self.headers)
                self._reply(status, payload, headers)

        return Handler

    def _route(self, method: str, path: str, query: dict, body: bytes, headers) -> tuple[int, dict, dict]:
        user = self._user(headers)
        if headers.get("authorization") and user is None:
            return 401, {"error": "Invalid credentials in Authorization header"}, {}
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", _REPO + r"(/revision/(?P<rev>[^/]+))?", self._info),
            ("GET", _REPO + r"/refs", self._refs),
            ("POST", _REPO + r"/branch/(?P<branch>[^/]+)", self._branch),
            ("POST", _REPO + r"/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", _REPO + r"/commit/(?P<rev>[^/]+)", self._commit),
            ("POST", _REPO + r"/discussions", self._open_pr),
            ("GET", _REPO + r"/discussions/(?P<num>\d+)", self._pr_details),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                repo = self.repos.get(args.pop("repo", ""))
                if "repo" in match.groupdict() and repo is None:
                    return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                if repo is not None and repo.private and not self._can_write(user, repo.repo_id):
                    return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                if repo is not None and method == "POST" and not self._can_write(user, repo.repo_id):
                    return 403, {"error": f"You don't have write access to {repo.repo_id}"}, {}
                return handler(user=user, repo=repo, query=query, body=body, **args)
        return 404, {"error": f"no route for {method} {path}"}, {}

    # ------------------------------------------------------------------ endpoints
    def _whoami(self, user, **_) -> tuple[int, dict, dict]:
        if user is None:
            return 401, {"error": "Invalid credentials in Authorization header"}, {}
        orgs = [{"name": o} for o in self.orgs.get(user, [])]
        return 200, {"type": "user", "name": user, "orgs": orgs, "auth": {"accessToken": {"role": "write"}}}, {}

    def _create_repo(self, user, body, **_) -> tuple[int, dict, dict]:
        req = json.loads(body)
        repo_id = f"{req.get('organization') or user}/{req['name']}"
        if not self._can_write(user, repo_id):
            return 403, {"error": f"You don't have the rights to create a model under the namespace \"{repo_id.split('/')[0]}\""}, {}
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}, {}
        self.add_repo(repo_id, private=req.get("visibility") == "private")
        return 200, {"url": url, "name": repo_id}, {}

    def _validate_yaml(self, body, **_) -> tuple[int, dict, dict]:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        meta = yaml.safe_load(match.group(1)) if match else {}
        base = (meta or {}).get("base_model") or []
        bad = [b for b in ([base] if isinstance(base, str) else base) if not _HUB_ID.match(str(b))]
        if bad:
            return 400, {"errors": [{"message": f'"base_model" must be Hub model ids, got {bad}'}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _info(self, repo, rev="main", **_) -> tuple[int, dict, dict]:
        head = repo.head(rev)
        if head is None:
            return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
        siblings = [{"rfilename": p} for p in sorted(head.files)]
        return 200, {"id": repo.repo_id, "sha": head.oid, "private": repo.private, "siblings": siblings}, {}

    def _refs(self, repo, **_) -> tuple[int, dict, dict]:
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": h[-1].oid}
                    for n, h in repo.refs.items() if not n.startswith("refs/")]
        return 200, {"branches": branches, "tags": [], "converts": []}, {}

    def _branch(self, repo, branch, body, **_) -> tuple[int, dict, dict]:
        if branch in repo.refs:
            return 409, {"error": "Reference already exists"}, {}
        start = repo.head((json.loads(body or b"{}") or {}).get("startingPoint") or "main")
        repo.refs[branch] = [start]
        return 200, {}, {}

    def _preupload(self, repo, rev, body, query, **_) -> tuple[int, dict, dict]:
        head = repo.head("main" if query.get("create_pr") else rev)
        if head is None:
            return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(head.files[f["path"]]) if f["path"] in head.files else None}
            for f in json.loads(body)["files"]
        ]
        return 200, {"files": files, "commitOid": head.oid}, {}

    def _commit(self, repo, rev, body, **_) -> tuple[int, dict, dict]:
        rev = rev.removeprefix("refs/heads/")
        if rev not in repo.refs:
            return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files, changed = dict(repo.refs[rev][-1].files), []
        for item in lines:
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                changed.append(item["value"]["path"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return 400, {"error": f"fake hub does not support '{item['key']}' operations"}, {}
        commit = self._make_commit(repo.repo_id, header["summary"], files, changed, repo.refs[rev][-1].oid)
        repo.refs[rev].append(commit)
        if self._commits_before_down is not None:
            self._commits_before_down -= 1
            self._down = self._commits_before_down <= 0  # falls over right after answering
        url = f"{self.endpoint}/{repo.repo_id}/commit/{commit.oid}"
        return 200, {"commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None}, {}

    def _open_pr(self, repo, user, body, **_) -> tuple[int, dict, dict]:
        req = json.loads(body)
        num = len(repo.prs) + 1
        repo.prs.append({"num": num, "title": req["title"], "author": user})
        repo.refs[f"refs/pr/{num}"] = [repo.refs["main"][-1]]
        return 200, {"num": num, "url": f"{self.endpoint}/{repo.repo_id}/discussions/{num}"}, {}

    def _pr_details(self, repo, num, **_) -> tuple[int, dict, dict]:
        pr = repo.prs[int(num) - 1]
        return 200, {
            "num": pr["num"], "title": pr["title"], "author": {"name": pr["author"]},
            "createdAt": "2026-01-01T00:00:00.000Z", "status": "open", "isPullRequest": True,
            "repo": {"name": repo.repo_id, "type": "model"}, "events": [],
            "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [], "diff": "",
        }, {}
