"""A local stand-in for the KFP v2beta1 REST API that records every call (method, path, query, headers, body).

It answers the endpoints kfp.Client uses to create experiments, upload pipelines and versions, start runs, read a
run (its state) and create recurring runs, with the response shapes of the real API, and keeps state (a second upload
of the same pipeline name becomes a new version).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class KfpApi:
    calls: list[Call] = field(default_factory=list)
    experiments: dict[str, str] = field(default_factory=dict)  # name -> id
    pipelines: dict[str, str] = field(default_factory=dict)  # name -> id
    versions: dict[str, list[str]] = field(default_factory=dict)  # pipeline id -> version ids
    # GET /runs/<id> answers these states in turn, then the last one again; a FAILED run carries run_error
    run_states: list[str] = field(default_factory=lambda: ["SUCCEEDED"])
    run_error: str = "task distill failed"
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def find(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path == path]

    # ---- responses ----------------------------------------------------------------------------------------
    def respond(self, c: Call) -> tuple[int, dict]:
        p = c.path.removeprefix(API)
        if c.method == "GET" and p == "/healthz":
            return 200, {"multi_user": False}
        if c.method == "GET" and p == "/experiments":
            name = _filter_value(c.query)
            if name in self.experiments:
                return 200, {
                    "experiments": [{"experiment_id": self.experiments[name], "display_name": name}],
                    "total_size": 1,
                }
            return 200, {}
        if c.method == "POST" and p == "/experiments":
            body = c.json()
            exp_id = f"exp-{len(self.experiments) + 1}"
            self.experiments[body["display_name"]] = exp_id
            return 200, {"experiment_id": exp_id, "display_name": body["display_name"]}
        if c.method == "GET" and p == "/pipelines":
            name = _filter_value(c.query)
            if name in self.pipelines:
                return 200, {
                    "pipelines": [{"pipeline_id": self.pipelines[name], "display_name": name}],
                    "total_size": 1,
                }
            return 200, {}
        if c.method == "POST" and p == "/pipelines/upload":
            name = c.query["name"][0]
            pid = f"pipeline-{len(self.pipelines) + 1}"
            self.pipelines[name] = pid
            self.versions[pid] = [f"{pid}-v1"]
            return 200, {"pipeline_id": pid, "display_name": name}
        if c.method == "GET" and p.startswith("/pipelines/") and p.endswith("/versions"):
            pid = p.split("/")[2]
            return 200, {
                "pipeline_versions": [
                    {"pipeline_id": pid, "pipeline_version_id": v} for v in reversed(self.versions.get(pid, []))
                ]
            }
        if c.method == "POST" and p == "/pipelines/upload_version":
            pid = c.query["pipelineid"][0]
            vid = f"{pid}-v{len(self.versions[pid]) + 1}"
            self.versions[pid].append(vid)
            return 200, {"pipeline_id": pid, "pipeline_version_id": vid, "display_name": c.query["name"][0]}
        if c.method == "POST" and p == "/runs":
            return 200, {**c.json(), "run_id": f"run-{len(self.find('POST', API + '/runs'))}", "state": "PENDING"}
        if c.method == "GET" and p.startswith("/runs/"):
            state = self.run_states[min(len(self.find("GET", c.path)), len(self.run_states)) - 1]
            run = {"run_id": p.split("/")[2], "display_name": "run", "state": state}
            if state == "FAILED":
                run["error"] = {"code": 2, "message": self.run_error}
            return 200, run
        if c.method == "POST" and p == "/recurringruns":
            return 200, {
                **c.json(),
                "recurring_run_id": f"rr-{len(self.find('POST', API + '/recurringruns'))}",
                "status": "ENABLED",
            }
        return 404, {"error": f"no stub for {c.method} {c.path}", "code": 5}

    # ---- server ---------------------------------------------------------------------------------------------
    def start(self) -> KfpApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                parts = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                call = Call(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    dict(self.headers.items()),
                    self.rfile.read(n) if n else b"",
                )
                api.calls.append(call)
                status, payload = api.respond(call)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815 - http.server calls these names

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _filter_value(query: dict[str, list[str]]) -> str | None:
    """The string value of kfp's ``filter`` query (a JSON predicate on display_name)."""
    raw = query.get("filter", [None])[0]
    if not raw:
        return None
    for pred in json.loads(raw).get("predicates", []):
        value = pred.get("string_value") or pred.get("stringValue")
        if value is not None:
            return value
    return None
