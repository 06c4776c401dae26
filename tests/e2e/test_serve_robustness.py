"""Robustness of a real `ikd serve` process: property-based fuzzing of its HTTP endpoints (hypothesis) and a bounded
load test (32 keep-alive clients). One server per module, on a free loopback port, its output in a log file.

Fuzzing asserts, for every request: a well-formed HTTP answer with status < 500; a 4xx carries the protocol's error
body ``{"error": "..."}`` (JSON); a 200 inference answer has outputs of consistent shapes. At the end the process is
alive, /v2/health/ready is 200, /metrics counts no 5xx and the log holds no traceback. Requests that are not HTTP at
all (a garbage request line) are answered by uvicorn itself before the app, with its own plain-text 400; for those
only status < 500 and an unharmed server are asserted."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import string
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from serve_helpers import MODEL, SENTENCES, call, export_tiny, start, stop

MAX_BODY = 65536
MAX_ROWS = 16
MAX_CHARS = 300
FUZZ = settings(
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INFER = f"/v2/models/{MODEL}/infer"


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: Path
    model_dir: Path


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_home(tmp_path_factory):
    """Hypothesis' own files (its cache of constants; the database is off) in a temporary folder, not the repo."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One `ikd serve` for the whole module (its output in a log file: a long run would fill a pipe)."""
    run = export_tiny(tmp_path_factory)
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc, url = start(
        run / "export",
        "--name",
        MODEL,
        "--max-delay-ms",
        2,
        "--max-batch-size",
        32,
        "--max-rows",
        MAX_ROWS,
        "--max-chars",
        MAX_CHARS,
        "--max-body-bytes",
        MAX_BODY,
        log=log,
    )
    assert proc.poll() is None, log.read_text()
    yield Served(proc, url, log, run / "export")
    stop(proc)


def assert_unharmed(served: Served):
    proc, url, log = served.proc, served.url, served.log
    assert proc.poll() is None, f"the server died:\n{log.read_text()[-3000:]}"
    assert call(url, "GET", "/v2/health/ready") == (200, {"ready": True})
    text = call(url, "GET", "/metrics")[1]
    fives = [line for line in text.splitlines() if line.startswith('ikd_requests_total{code="5')]
    assert not fives, fives
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


# ---- one HTTP client per module, reconnecting when the server closes ---------------------------------------------
class Client:
    def __init__(self, url: str):
        self.host, port = urllib.parse.urlsplit(url).netloc.split(":")
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0  # kept-alive connections found closed by the server (each request then sent again)

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        """(status, headers, body bytes) of one request on the kept-alive connection (a new one when the server
        closed the last)."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                if r.will_close:
                    self.close()
                return r.status, r.headers, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()  # a kept-alive connection the server had closed: retry once on a fresh one
                if attempt:
                    raise
                self.reconnects += 1

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="module")
def client(served):
    c = Client(served.url)
    yield c
    c.close()


def check_answer(method, path, status, headers, data):
    """The properties every answer must have. Returns the parsed JSON body (None for HEAD and /metrics)."""
    shown = f"{method} {path[:120]} -> {status}: {data[:300]!r}"
    event(f"status {status}")  # the spread of answers, in --hypothesis-show-statistics
    assert 100 <= status < 500, shown
    if 300 <= status < 400:  # Starlette's redirect of a trailing slash (/v2/ -> /v2)
        assert headers["location"], shown
        return None
    if method == "HEAD" or (status == 200 and path.startswith("/metrics")):
        return None
    assert headers.get_content_type() == "application/json", shown
    body = json.loads(data)
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), shown
        assert body["error"], shown
    elif status == 200 and method == "POST" and path.split("?")[0].endswith("/infer"):
        check_outputs(body, shown)
    return body


def check_outputs(body, shown, rows=None):
    """A 200 inference answer: named outputs whose data length is the product of their shape, all of ``rows``."""
    assert body["model_name"] == MODEL and body["outputs"], shown
    for out in body["outputs"]:
        n = out["shape"][0]
        assert rows is None or n == rows, shown
        want = {"logits": [n, 2], "probabilities": [n, 2], "label": [n]}[out["name"]]
        assert out["shape"] == want and len(out["data"]) == (2 * n if len(want) == 2 else n), shown
        if out["name"] == "probabilities":
            assert all(abs(a + b - 1) < 1e-4 for a, b in zip(out["data"][::2], out["data"][1::2], strict=True)), shown


# ---- strategies ------------------------------------------------------------------------------------------------
ODD = ["\ud800", "\udfff", "\x00", "\ufeff", "\u202e", "é", "😀", "\n", "\\", '"', "\u2028", "ꙮ", " "]
chars = st.one_of(st.characters(), st.sampled_from(ODD))
texts = st.text(chars, max_size=40)
ints = st.one_of(st.integers(-3, 300), st.integers(), st.sampled_from([2**63, -(2**63) - 1, 10**30, 2**31]))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), texts)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(texts, c, max_size=4), max_leaves=12)
DTYPES = ["BYTES", "INT64", "INT32", "FP32", "BOOL", "bytes", "", None, 1, ["BYTES"]]
NAMES = ["text", "input_ids", "attention_mask", "token_type_ids", "texts", "", "TEXT", None, 3, ["text"], {}]


@st.composite
def tensors(draw):
    """A v2 input tensor, near-valid: each key present or not, of the right type or not."""
    shape = draw(st.one_of(st.lists(ints, max_size=3), st.lists(st.integers(0, 20), min_size=1, max_size=2), values))
    data = draw(
        st.one_of(
            st.lists(texts, max_size=20),
            st.lists(st.integers(-2, 250), max_size=40),
            st.lists(st.lists(st.one_of(texts, st.integers(-2, 250)), max_size=6), max_size=8),
            values,
        )
    )
    return draw(
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.one_of(st.sampled_from(NAMES), texts),
                "datatype": st.one_of(st.sampled_from(DTYPES), texts),
                "shape": st.just(shape),
                "data": st.just(data),
                "parameters": values,
            },
        )
    )


@st.composite
def infer_bodies(draw):
    """A near-valid v2 inference body: tensors as above, optional id, parameters and outputs."""
    optional = {
        "id": st.one_of(texts, values),
        "parameters": values,
        "outputs": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.sampled_from(["logits", "probabilities", "label", "x"]), values)}
                ),
                max_size=4,
            ),
            values,
        ),
    }
    return draw(
        st.fixed_dictionaries({}, optional={"inputs": st.one_of(st.lists(tensors(), max_size=4), values), **optional})
    )


@st.composite
def text_bodies(draw):
    """A text inference body, valid about one time in three, else with one part broken."""
    rows = draw(st.lists(st.one_of(st.sampled_from(SENTENCES), texts), min_size=1, max_size=MAX_ROWS))
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(rows)], "data": rows}
    inputs = [tensor]
    broken = draw(st.sampled_from([None, None, None, "shape", "datatype", "data", "nested", "extra", "rows"]))
    if broken == "shape":
        tensor["shape"] = draw(st.lists(ints, max_size=3))
    elif broken == "datatype":
        tensor["datatype"] = draw(st.one_of(st.sampled_from(DTYPES), texts))
    elif broken == "data":
        rows[draw(st.integers(0, len(rows) - 1))] = draw(values)
    elif broken == "nested":  # [n, 1] is valid, [1, n] a pair per row, deeper nesting is not
        tensor.update(
            draw(
                st.sampled_from(
                    [
                        {"shape": [len(rows), 1], "data": [[r] for r in rows]},
                        {"shape": [1, len(rows)], "data": [rows]},
                        {"shape": [len(rows)], "data": [[[r]] for r in rows]},
                    ]
                )
            )
        )
    elif broken == "extra":
        inputs.append(draw(tensors()))
    elif broken == "rows":
        tensor.update(shape=[MAX_ROWS + 1], data=(rows * (MAX_ROWS + 1))[: MAX_ROWS + 1])
    optional = {
        "id": st.one_of(texts, values),
        "parameters": values,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["logits", "label", "x"])})),
    }
    return {"inputs": inputs, **draw(st.fixed_dictionaries({}, optional=optional))}


@st.composite
def token_bodies(draw):
    """A token-id inference body (ids below the tiny model's vocabulary of 193, right-padded masks, type ids or
    not), valid about one time in three, else with one part broken."""
    n, width = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    grid = lambda el: st.lists(st.lists(el, min_size=width, max_size=width), min_size=n, max_size=n)  # noqa: E731
    ids = draw(grid(st.integers(0, 150)))
    mask = [[1] * k + [0] * (width - k) for k in draw(st.lists(st.integers(1, width), min_size=n, max_size=n))]
    inputs = {
        "input_ids": {"name": "input_ids", "datatype": "INT64", "shape": [n, width], "data": ids},
        "attention_mask": {"name": "attention_mask", "datatype": "INT64", "shape": [n, width], "data": mask},
    }
    if draw(st.booleans()):
        inputs["token_type_ids"] = {
            "name": "token_type_ids",
            "datatype": "INT64",
            "shape": [n, width],
            "data": draw(grid(st.integers(0, 1))),
        }
    broken = draw(
        st.sampled_from([None, None, None, "ids", "mask", "types", "shape", "datatype", "empty", "drop", "width"])
    )
    if broken == "ids":
        inputs["input_ids"]["data"] = draw(grid(st.one_of(st.integers(0, 150), st.integers(-3, 300), ints, values)))
    elif broken == "mask":
        inputs["attention_mask"]["data"] = draw(grid(st.integers(-1, 2)))
    elif broken == "types":
        inputs["token_type_ids"] = {
            "name": "token_type_ids",
            "datatype": "INT64",
            "shape": [n, width],
            "data": draw(grid(st.integers(-1, 3))),
        }
    elif broken == "shape":
        inputs[draw(st.sampled_from(sorted(inputs)))]["shape"] = draw(st.lists(ints, max_size=3))
    elif broken == "datatype":
        inputs[draw(st.sampled_from(sorted(inputs)))]["datatype"] = draw(st.sampled_from(DTYPES))
    elif broken == "empty":
        for t in inputs.values():
            t.update(shape=draw(st.sampled_from([[0, width], [n, 0], [0]])), data=[])
    elif broken == "drop":
        del inputs[draw(st.sampled_from(["input_ids", "attention_mask"]))]
    elif broken == "width":  # past the exported max_length of 32
        inputs = {k: {**t, "shape": [n, 33], "data": [[1] * 33] * n} for k, t in inputs.items()}
    return {"inputs": draw(st.permutations(list(inputs.values())))}


def encode(value, how: str) -> bytes:
    """JSON bytes of ``value``: ASCII escapes, raw UTF-8 (lone surrogates as their CESU bytes), or UTF-16."""
    if how == "ascii":
        return json.dumps(value).encode()
    if how == "utf-16":
        return json.dumps(value, ensure_ascii=False).encode("utf-16", "surrogatepass")
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


raw_bodies = st.one_of(
    st.binary(max_size=300),  # not JSON, not UTF-8
    st.integers(1, 40000).map(lambda d: b"[" * d + b"]" * d),  # deeply nested
    st.integers(1, 40000).map(lambda d: b'{"inputs": ' + b"[" * d),  # deeply nested and cut off
    st.integers(4000, 20000).map(lambda d: b'{"texts": ' + b"7" * d + b"}"),  # past Python's int digit limit
    st.sampled_from(
        [
            b"",
            b"null",
            b"NaN",
            b"-Infinity",
            b"{}",
            b"[]",
            b'""',
            b'{"texts": ["a"]',
            b"\xef\xbb\xbf{}",
            b'{"texts": ["a"], "texts": 5}',
            b'{"texts": ["\\ud800"]}',
            b'{"texts": ["\xed\xa0\x80"]}',
        ]
    ),
)
CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/octet-stream",
    "application/json; charset=latin-1",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "",
    "*/*;;;",
]


def model_paths():
    odd = ["nope", "SST2-TINY", "..", ".", "%2e%2e", MODEL + "%00", MODEL + "%2F1", "a" * 3000]
    name = st.one_of(
        st.just(MODEL),
        st.sampled_from(odd),
        texts.map(lambda t: urllib.parse.quote(t.encode("utf-8", "surrogatepass"), safe="")),
    )
    version = st.one_of(
        st.sampled_from(["1", "2", "01", "-1", "0", "1.0", "%31", "latest", ""]), st.integers().map(str)
    )
    tail = st.sampled_from(["", "/ready", "/infer", "/versions/{v}/infer", "/versions/{v}", "/infer/", "/x"])
    return st.builds(lambda n, v, t: "/v2/models/" + n + t.format(v=v), name, version, tail)


paths = st.one_of(
    st.sampled_from(
        [
            "/v2",
            "/v2/",
            "/v2/health/live",
            "/v2/health/ready",
            "/predict",
            "/metrics",
            "/",
            "/v3",
            "/v2/models",
            "/v2/models/",
            "/predict?x=1",
            INFER + "?debug=1",
            "//v2",
            "/v2/health/../health/live",
        ]
    ),
    model_paths(),
    st.text(string.ascii_letters + string.digits + "-._~%/!$&'()*+,;=:@", max_size=60).map(lambda t: "/" + t),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO"])


def oversize(n: int) -> bytes:
    return json.dumps({"texts": ["word " * n]}).encode()


# ---- fuzzing ---------------------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=400)
@given(
    body=st.one_of(text_bodies(), token_bodies(), infer_bodies(), values),
    how=st.sampled_from(["ascii", "utf-8", "utf-16"]),
    ctype=st.sampled_from(CONTENT_TYPES),
    versioned=st.booleans(),
)
def test_fuzz_v2_infer_bodies(served, client, body, how, ctype, versioned):
    path = f"/v2/models/{MODEL}/versions/1/infer" if versioned else INFER
    status, headers, data = client.send("POST", path, encode(body, how), {"Content-Type": ctype} if ctype else {})
    check_answer("POST", path, status, headers, data)


@settings(FUZZ, max_examples=250)
@given(
    body=st.one_of(
        raw_bodies,
        st.builds(lambda v: json.dumps({"texts": v}).encode(), values),
        st.builds(lambda v: encode(v, "utf-8"), st.fixed_dictionaries({"texts": st.lists(texts, max_size=20)})),
    ),
    path=st.sampled_from(["/predict", INFER]),
)
@example(body=oversize(MAX_BODY), path="/predict")
@example(body=json.dumps({"texts": ["a " * (MAX_BODY // 2 - 20)]}).encode(), path="/predict")  # long, within the limit
def test_fuzz_raw_and_predict_bodies(served, client, body, path):
    status, headers, data = client.send("POST", path, body, {"Content-Type": "application/json"})
    check_answer("POST", path, status, headers, data)
    if len(body) > MAX_BODY:
        assert status == 413


@settings(FUZZ, max_examples=300)
@given(
    method=methods,
    path=paths,
    body=st.one_of(
        st.none(),
        st.builds(lambda v: encode(v, "utf-8"), values),
        st.sampled_from([json.dumps({"texts": SENTENCES[:2]}).encode()]),
    ),
)
def test_fuzz_paths_methods_and_model_names(served, client, method, path, body):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    status, got, data = client.send(method, path, body, headers)
    check_answer(method, path, status, got, data)


@settings(FUZZ, max_examples=150)
@given(
    rows=st.lists(
        st.one_of(
            st.text(chars, min_size=1, max_size=80),
            st.sampled_from(SENTENCES),
            st.integers(1, 3000).map(lambda n: "long " * n),
        ),
        min_size=1,
        max_size=MAX_ROWS,
    ),
    outputs=st.one_of(
        st.none(), st.lists(st.sampled_from(["logits", "probabilities", "label"]), min_size=1, max_size=3, unique=True)
    ),
    request_id=st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",)), max_size=20)),
    tokens=st.booleans(),
)
@example(rows=["long " * 3000] * MAX_ROWS, outputs=None, request_id=None, tokens=False)  # past --max-body-bytes
def test_fuzz_valid_requests_get_200_with_the_right_shape(served, client, rows, outputs, request_id, tokens):
    valid = [r for r in rows if r.strip() and r.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == r]
    if not valid:
        valid = ["fine"]
    if tokens:  # the same texts as token ids, right-padded, through the model's own tokenizer file
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(served.model_dir / "tokenizer.json"))
        tok.enable_truncation(32)
        ids = [e.ids for e in tok.encode_batch(valid)]
        width = max(map(len, ids))
        inputs = [
            {
                "name": "input_ids",
                "datatype": "INT64",
                "shape": [len(ids), width],
                "data": [r + [0] * (width - len(r)) for r in ids],
            },
            {
                "name": "attention_mask",
                "datatype": "INT64",
                "shape": [len(ids), width],
                "data": [[1] * len(r) + [0] * (width - len(r)) for r in ids],
            },
        ]
    else:
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [len(valid)], "data": valid}]
    body = {"inputs": inputs}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    if request_id is not None:
        body["id"] = request_id
    payload = encode(body, "utf-8")
    status, headers, data = client.send("POST", INFER, payload, {"Content-Type": "application/json"})
    out = check_answer("POST", INFER, status, headers, data)
    if len(payload) > MAX_BODY:  # many long rows: a valid request past --max-body-bytes is refused, not served
        assert status == 413 and "over the limit" in out["error"], data[:300]
        return
    assert status == 200, data[:300]
    check_outputs(out, data[:300], rows=len(valid))
    assert [o["name"] for o in out["outputs"]] == (outputs or ["logits", "probabilities", "label"])
    assert out.get("id") == request_id


@settings(FUZZ, max_examples=80)
@given(
    junk=st.one_of(
        st.binary(min_size=1, max_size=200),
        st.sampled_from(
            [
                b"GET / HTTP/1.1\r\n\r\n",
                b"GET /v2 HTTP/9.9\r\nHost: x\r\n\r\n",
                b"\r\n\r\n",
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}",
            ]
        ),
    )
)
def test_fuzz_malformed_http(served, junk):
    with socket.create_connection(("127.0.0.1", Client(served.url).port), timeout=5) as s:
        try:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        except (ConnectionError, TimeoutError):
            answer = b""
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status < 500, answer[:300]


def test_server_is_unharmed_after_fuzzing(served, client):
    client.close()
    assert_unharmed(served)


# ---- load ------------------------------------------------------------------------------------------------------
#: Seconds of load (IKD_LOAD_SECONDS overrides it for local experiments); the first WARMUP share is left out of the
#: memory baseline: by then every batch shape (up to 32 rows x 32 tokens) has been through ONNX Runtime's arena.
LOAD_SECONDS = float(os.environ.get("IKD_LOAD_SECONDS", "60"))
WARMUP = 0.2
CLIENTS = 32
WORDS = [
    "the",
    "a",
    "film",
    "movie",
    "story",
    "plot",
    "acting",
    "was",
    "is",
    "not",
    "very",
    "quite",
    "rather",
    "good",
    "bad",
    "dull",
    "great",
    "funny",
    "sad",
    "long",
]


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def mixed_request(rng: random.Random, tokenize):
    """(method, path, body bytes, expected status) of one realistic request: mostly v2 inference of 1-8 texts of
    varied lengths, some /predict, token ids (``tokenize``: texts -> id lists), metadata, and about 5% invalid ones
    expecting their 4xx."""
    text = lambda: " ".join(rng.choices(WORDS, k=rng.choice([1, 3, 8, 20, 60])))  # noqa: E731
    roll = rng.random()
    if roll < 0.55:
        rows = [text() for _ in range(rng.randint(1, 8))]
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(rows)], "data": rows}]}
        if rng.random() < 0.3:
            body.update(id=f"r{rng.randrange(10**6)}", outputs=[{"name": "label"}])
        return "POST", rng.choice([INFER, f"/v2/models/{MODEL}/versions/1/infer"]), json.dumps(body).encode(), 200
    if roll < 0.80:
        return "POST", "/predict", json.dumps({"texts": [text() for _ in range(rng.randint(1, 4))]}).encode(), 200
    if roll < 0.88:
        ids = tokenize([text() for _ in range(rng.randint(1, 4))])
        n, width = len(ids), max(map(len, ids))
        body = {
            "inputs": [
                {
                    "name": "input_ids",
                    "datatype": "INT64",
                    "shape": [n, width],
                    "data": [r + [0] * (width - len(r)) for r in ids],
                },
                {
                    "name": "attention_mask",
                    "datatype": "INT64",
                    "shape": [n, width],
                    "data": [[1] * len(r) + [0] * (width - len(r)) for r in ids],
                },
            ]
        }
        return "POST", INFER, json.dumps(body).encode(), 200
    if roll < 0.95:
        return "GET", rng.choice(["/v2/health/ready", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready"]), None, 200
    return rng.choice(
        [
            ("POST", INFER, b"{not json", 400),
            ("POST", "/predict", b'{"texts": []}', 400),
            ("POST", "/v2/models/nope/infer", b"{}", 404),
            ("POST", "/predict", b'{"texts": [" "]}', 400),
            (
                "POST",
                INFER,
                json.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode(),
                400,
            ),
            ("POST", "/predict", json.dumps({"texts": ["a"] * (MAX_ROWS + 1)}).encode(), 400),
        ]
    )


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] if sorted_values else float("nan")


@pytest.mark.load
def test_load_32_keepalive_clients(served):
    """32 keep-alive clients for LOAD_SECONDS: no 5xx, no unexpected status, no connection error, the server alive,
    memory stable. RSS bound: growth after warm-up under 10% of the warm RSS + 20 MiB (about 29 MiB on the ~86 MiB
    tiny-model server). A server that holds nothing per request keeps a flat RSS once its batch shapes are warm
    (measured: +0.4 MiB over 60 s; allocator and ONNX Runtime arena jitter stays within a few MiB), while the bound
    still fails a leak of ~1 KiB per request at the ~28k requests after warm-up a 60 s run made here (~600 req/s on
    two shared cores), and any retention of request bodies at once."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(served.model_dir / "tokenizer.json"))
    tok.enable_truncation(32)
    tokenize = lambda batch: [e.ids for e in tok.encode_batch(batch)]  # noqa: E731
    stop_at = time.monotonic() + LOAD_SECONDS
    warm_at = time.monotonic() + WARMUP * LOAD_SECONDS
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    unexpected: list[str] = []
    errors: list[str] = []
    reconnects: list[int] = []

    def worker(seed: int):
        rng, c = random.Random(seed), Client(served.url)
        mine, seen, wrong = [], {}, []
        try:
            while time.monotonic() < stop_at:
                method, path, body, want = mixed_request(rng, tokenize)
                tick = time.perf_counter()
                status, _, data = c.send(method, path, body, {"Content-Type": "application/json"} if body else {})
                mine.append(time.perf_counter() - tick)
                seen[status] = seen.get(status, 0) + 1
                if status != want and len(wrong) < 5:
                    wrong.append(f"{method} {path} -> {status} (wanted {want}): {data[:200]!r}")
        except Exception as exc:
            errors.append(f"client {seed}: {type(exc).__name__}: {exc}")
        finally:
            c.close()
            reconnects.append(c.reconnects)
            with lock:
                latencies.extend(mine)
                unexpected.extend(wrong)
                for k, v in seen.items():
                    statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(CLIENTS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(max(0.0, warm_at - time.monotonic()))
    rss_warm = rss_bytes(served.proc.pid)
    rss_peak = rss_warm
    while time.monotonic() < stop_at:
        time.sleep(min(1.0, max(0.0, stop_at - time.monotonic())))
        rss_peak = max(rss_peak, rss_bytes(served.proc.pid))
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - started
    rss_end = rss_bytes(served.proc.pid) if served.proc.poll() is None else 0
    lat = sorted(latencies)
    mib = 1 << 20
    summary = (
        f"load: {CLIENTS} clients x {LOAD_SECONDS:.0f} s: {len(lat)} requests, {len(lat) / elapsed:.0f} req/s, "
        f"p50 {1000 * percentile(lat, 0.5):.1f} ms, p99 {1000 * percentile(lat, 0.99):.1f} ms, "
        f"max {1000 * (lat[-1] if lat else 0):.0f} ms; status {dict(sorted(statuses.items()))}; "
        f"RSS warm {rss_warm / mib:.1f} MiB, peak {rss_peak / mib:.1f} MiB, end {rss_end / mib:.1f} MiB; "
        f"reconnects {sum(reconnects)}, client errors {len(errors)}"
    )
    print("\n" + summary)
    assert not any(t.is_alive() for t in threads), summary
    assert not errors, f"{summary}\n" + "\n".join(errors[:10])
    assert sum(reconnects) == 0, summary  # no kept-alive connection dropped by the server
    assert not any(s >= 500 for s in statuses), summary
    assert not unexpected, f"{summary}\n" + "\n".join(unexpected[:10])
    assert len(lat) >= CLIENTS, summary
    assert rss_end - rss_warm < 0.10 * rss_warm + 20 * mib, summary
    assert_unharmed(served)
