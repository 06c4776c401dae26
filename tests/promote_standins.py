"""Stand-ins for what `ikd promote` talks to, as in-process HTTP servers on loopback: a Kubeflow Model Registry that
answers as its upstream OpenAPI document says (../shared/model-registry/model-registry.openapi.yaml; every request
body and every answer is checked against the document's schemas, and every path and method against its paths), and
a Kubernetes API server holding one InferenceService and one Deployment whose readiness a test scripts.

The real clients talk to them: ikd's registry client and the `kubernetes` package (through a kubeconfig that
points at the stand-in), so what is tested is what would be sent to a cluster."""

from __future__ import annotations

import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

OPENAPI = Path(__file__).resolve().parents[2] / "shared" / "model-registry" / "model-registry.openapi.yaml"
PREFIX = "/api/model_registry/v1alpha3"


# ---- the OpenAPI document as JSON Schemas ------------------------------------------------------------------------
def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects as JSON Schema: ``nullable`` as a null type, a ``oneOf`` with a discriminator as
    the branch its mapping names (OpenAPI picks by the property; plain ``oneOf`` would refuse a body that matches
    several open branches, as a ModelArtifact matches a DocArtifact)."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k not in ("discriminator", "nullable", "example")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    disc = node.get("discriminator")
    if disc and "oneOf" in node:
        prop, mapping = disc["propertyName"], disc["mapping"]
        out.pop("oneOf")
        out["required"] = sorted({*out.get("required", []), prop})
        out["properties"] = {**out.get("properties", {}), prop: {"enum": sorted(mapping)}}
        out["allOf"] = [
            {"if": {"properties": {prop: {"const": k}}}, "then": {"$ref": ref}} for k, ref in sorted(mapping.items())
        ]
    return out


class OpenAPI:
    """The registry's document: which operation a request is, and its request and response schemas."""

    def __init__(self, path: Path = OPENAPI):
        self.doc = yaml.safe_load(path.read_text())
        self.components = _json_schema(self.doc["components"])
        self.routes = []
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", r"([^/]+)", template) + "$"
            self.routes.append((re.compile(pattern), template, item))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for pattern, template, item in self.routes:
            if pattern.match(path) and method.lower() in item:
                return template, item[method.lower()]
        raise AssertionError(f"{method} {path}: no such operation in {OPENAPI.name}")

    def errors(self, schema: dict[str, Any], value: Any) -> list[str]:
        import jsonschema

        validator = jsonschema.Draft202012Validator({**_json_schema(schema), "components": self.components})
        return [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
            for e in validator.iter_errors(value)
        ]

    def check_query(self, method: str, path: str, query: dict[str, str]) -> list[str]:
        """Every query parameter documented for the operation (its own or its path's), its value of the schema."""
        template, op = self.operation(method, path)
        params = {}
        for p in [*self.doc["paths"][template].get("parameters", []), *op.get("parameters", [])]:
            if "$ref" in p:
                p = self.doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
            if p["in"] == "query":
                params[p["name"]] = p["schema"]
        out = []
        for name, v in query.items():
            if name not in params:
                out.append(f"{method} {template}: undocumented query parameter {name}")
                continue
            schema = params[name]
            typed: Any = int(v) if schema.get("type") == "integer" and v.lstrip("-").isdigit() else v
            out += [f"{method} {template} ?{name}: {e}" for e in self.errors(schema, typed)]
        return out

    def check_request(self, method: str, path: str, body: Any) -> list[str]:
        template, op = self.operation(method, path)
        if "requestBody" not in op:
            return [] if body is None else [f"{method} {template}: takes no body"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        return [f"{method} {template} request: {e}" for e in self.errors(schema, body)]

    def check_response(self, method: str, path: str, status: int, body: Any) -> list[str]:
        template, op = self.operation(method, path)
        if str(status) not in op["responses"]:
            return [f"{method} {template}: status {status} is not documented"]
        ref = op["responses"][str(status)]["$ref"].rsplit("/", 1)[1]
        schema = self.doc["components"]["responses"][ref]["content"]["application/json"]["schema"]
        return [f"{method} {template} {status} response: {e}" for e in self.errors(schema, body)]


# ---- servers ----------------------------------------------------------------------------------------------------
class _Server:
    """A ThreadingHTTPServer on a free loopback port whose requests go to ``self.handle(method, path, query, body)``
    -> (status, body)."""

    def __init__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with owner.lock:
                    status, answer = owner.handle(self.command, url.path, query, body, self.headers)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve  # noqa: N815 - http.server calls these names

            def log_message(self, *args):
                pass

        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class RegistryStandIn(_Server):
    """Model Registry v1alpha3: the endpoints that register a model version and look up the newest one.
    ``calls``: (method, path, body) of every request; ``violations``: every way a request or an answer departed
    from the OpenAPI document (a test asserts there are none)."""

    def __init__(self):
        super().__init__()
        self.api = OpenAPI()
        self.calls: list[tuple[str, str, Any]] = []
        self.violations: list[str] = []
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"rm": {}, "mv": {}, "ma": {}}
        self.links: dict[str, list[str]] = {}  # model version id -> artifact ids
        self.next_id = 1

    def _new(self, kind: str, body: dict[str, Any], **extra) -> dict[str, Any]:
        obj = {**body, **extra, "id": str(self.next_id), "createTimeSinceEpoch": "1700000000000"}
        obj["lastUpdateTimeSinceEpoch"] = obj["createTimeSinceEpoch"]
        self.next_id += 1
        self.objects[kind][obj["id"]] = obj
        return obj

    def _find(self, kind: str, **match) -> dict[str, Any] | None:
        return next(
            (o for o in self.objects[kind].values() if all(o.get(k) == v for k, v in match.items() if v is not None)),
            None,
        )

    @staticmethod
    def _list(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"items": items, "size": len(items), "pageSize": max(len(items), 1), "nextPageToken": ""}

    def handle(self, method, path, query, body, headers):
        self.calls.append((method, path, body))
        try:
            refused = self.api.check_request(method, path, body) + self.api.check_query(method, path, query)
        except AssertionError as exc:
            self.violations.append(str(exc))
            return 404, {"code": "404", "message": str(exc)}
        if refused:  # what the server's own validation answers
            self.violations += refused
            return 400, {"code": "400", "message": "; ".join(refused)[:500]}
        status, answer = self._answer(method, path.removeprefix(PREFIX), query, body)
        self.violations += self.api.check_response(method, path, status, answer)
        return status, answer

    def _answer(self, method, path, query, body):
        missing = 404, {"code": "404", "message": "not found"}
        if (method, path) == ("GET", "/registered_models"):
            return 200, self._list(list(self.objects["rm"].values()))
        if (method, path) == ("GET", "/registered_model"):
            rm = self._find("rm", name=query.get("name"))
            return (200, rm) if rm else missing
        if (method, path) == ("POST", "/registered_models"):
            if self._find("rm", name=body["name"]):
                return 409, {"code": "409", "message": "exists"}
            return 201, self._new("rm", body, state="LIVE")
        if m := re.fullmatch(r"/registered_models/(\d+)/versions", path):
            mvs = [o for o in self.objects["mv"].values() if o["registeredModelId"] == m[1]]
            return 200, self._list(sorted(mvs, key=lambda o: int(o["id"]), reverse=query.get("sortOrder") == "DESC"))
        if (method, path) == ("GET", "/model_version"):
            mv = self._find("mv", name=query.get("name"), registeredModelId=query.get("parentResourceId"))
            return (200, mv) if mv else missing
        if (method, path) == ("POST", "/model_versions"):
            if body["registeredModelId"] not in self.objects["rm"]:
                return 404, {"code": "404", "message": "no such registered model"}
            return 201, self._new("mv", body, state="LIVE")
        if m := re.fullmatch(r"/model_versions/(\d+)/artifacts", path):
            if m[1] not in self.objects["mv"]:
                return missing
            if method == "POST":
                ma = self._new("ma", body, artifactType="model-artifact")
                self.links.setdefault(m[1], []).append(ma["id"])
                return 201, ma
            return 200, self._list([self.objects["ma"][i] for i in self.links.get(m[1], [])])
        if (method, path) == ("GET", "/model_artifact"):
            ids = self.links.get(query.get("parentResourceId", ""), [])
            found = [self.objects["ma"][i] for i in ids if self.objects["ma"][i].get("name") == query.get("name")]
            return (200, found[0]) if found else missing
        self.violations.append(f"the stand-in does not implement {method} {path}")
        return 501, {"code": "501", "message": "not implemented by the stand-in"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what a dict body to the kubernetes client's patch calls means here)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class KubeStandIn(_Server):
    """The Kubernetes API for one InferenceService and one Deployment (namespace ``ns``). A PATCH that changes the
    spec bumps ``metadata.generation``; each GET then reports the status that ``ready(obj, polls)`` scripts (a
    function of the object and how many reads since the last patch; default: ready on the second read). ``patches``:
    (kind, body, object after) of every patch; ``reads``: how many GETs."""

    ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}"
    DEPLOY = "/apis/apps/v1/namespaces/{ns}/deployments/{name}"

    def __init__(
        self, ns: str, isvc: dict[str, Any] | None = None, deployment: dict[str, Any] | None = None, ready=None
    ):
        super().__init__()
        self.objects: dict[str, dict[str, Any]] = {}
        for kind, obj in (("isvc", isvc), ("deploy", deployment)):
            if obj is not None:
                obj = copy.deepcopy(obj)
                obj["metadata"] = {**obj["metadata"], "namespace": ns, "generation": 1}
                template = self.ISVC if kind == "isvc" else self.DEPLOY
                self.objects[template.format(ns=ns, name=obj["metadata"]["name"])] = obj
        self.ready = ready or (lambda obj, polls: polls >= 2)
        self.polls = 0
        self.patches: list[tuple[str, Any, dict[str, Any]]] = []
        self.reads = 0
        self.content_types: list[str] = []

    def handle(self, method, path, query, body, headers):
        obj = self.objects.get(path)
        if obj is None:
            return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        kind = "isvc" if "/inferenceservices/" in path else "deploy"
        if method == "GET":
            self.reads += 1
            self.polls += 1
            obj["status"] = self._status(kind, obj, self.ready(obj, self.polls))
            return 200, obj
        if method == "PATCH":
            self.content_types.append(headers.get("Content-Type", ""))
            new = merge_patch(obj, body)
            if new.get("spec") != obj.get("spec"):
                new["metadata"]["generation"] = obj["metadata"]["generation"] + 1
            self.objects[path] = new
            self.patches.append((kind, body, copy.deepcopy(new)))
            self.polls = 0
            return 200, new
        return 405, {"kind": "Status", "status": "Failure", "code": 405}

    @staticmethod
    def _status(kind: str, obj: dict[str, Any], ready: bool) -> dict[str, Any]:
        gen = obj["metadata"]["generation"]
        if kind == "isvc":
            return {
                "observedGeneration": gen if ready else gen - 1,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            }
        want = obj["spec"].get("replicas", 1)
        return {
            "observedGeneration": gen,
            "replicas": want + (0 if ready else 1),
            "updatedReplicas": want if ready else 1,
            "availableReplicas": want if ready else want - 1,
        }

    def kubeconfig(self, folder: Path) -> Path:
        """A kubeconfig whose current context is this server (no auth)."""
        path = Path(folder) / "kubeconfig"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "c", "context": {"cluster": "stand-in", "user": "u"}}],
            "current-context": "c",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path
