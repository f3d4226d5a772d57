"""A local OpenAI-compatible chat-completions server for tests (stdlib only, 127.0.0.1, free port).

Answers are made up from the JSON schema the request carries (in `response_format`, or in the
prompt for clients that fell back to instructions), deterministically from the request text, so
two runs give the same bank. Faults are queued with `add_fault(kind, times, match)` and hit the
next `times` requests whose question contains `match`:
  "429" (with Retry-After), "500", "hang" (no answer until the client has given up),
  "malformed" (not JSON), "missing" (an attribute left out), "long" (over-long descriptions),
  "empty" (blank descriptions), "401".
`supports_json_schema=False` makes the server refuse `response_format` json_schema with a 400,
like many local servers. Run standalone for the subprocess tests:
    python tests/fake_llm_server.py --delay-s 0.05   (prints the base URL, serves until killed)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "hang", "malformed", "missing", "long", "empty", "401")


class FakeLLMServer:
    def __init__(self, supports_json_schema: bool = True, delay_s: float = 0.0, retry_after: str = "0",
                 hang_s: float = 5.0):
        self.supports_json_schema = supports_json_schema
        self.delay_s = delay_s  # before every answer, so that a run can be interrupted midway
        self.retry_after = retry_after  # Retry-After header value sent with 429
        self.hang_s = hang_s
        self.requests: list[dict[str, Any]] = []  # every request body, in arrival order
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[list[Any]] = []  # [kind, remaining, match]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True  # a hanging handler must not keep the test process alive
        # A short poll interval so that stop() returns quickly.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def add_fault(self, kind: str, times: int = 1, match: str | None = None) -> None:
        assert kind in FAULTS, kind
        with self._lock:
            self._faults.append([kind, times, match])

    def start(self) -> "FakeLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def questions(self) -> list[str]:
        """The first user message of every request (the question asked)."""
        return [_question(body) for body in self.requests]

    def _take_fault(self, question: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                kind, remaining, match = fault
                if remaining > 0 and (match is None or match in question):
                    fault[1] -= 1
                    return kind
        return None


def _question(body: dict[str, Any]) -> str:
    return next((m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"), "")


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    # A client without structured output puts the schema in a system message, as a JSON object.
    for message in body.get("messages", []):
        content = message.get("content") or ""
        start = content.find("\n{")
        if message.get("role") == "system" and start >= 0:
            try:
                return json.loads(content[start + 1:])
            except ValueError:
                continue
    return None


def _make_answer(schema: dict[str, Any], question: str, fault: str | None) -> Any:
    quoted = re.search(r'"([^"]+)"', question)
    label = quoted.group(1) if quoted else "the action"
    count = re.search(r"(\d+) (?:different|attributes)", question)
    n = int(count.group(1)) if count else 3
    digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:6]

    def text(path: str) -> str:
        words = path.replace("_", " ")
        if fault == "long":
            # One over-long first sentence, then more: exercises the word-boundary cut.
            return (f"While doing {label} the {words} keeps changing " + "again and again " * 12
                    + f"in case {digest}. It ends well. Truly.")
        if fault == "empty":
            return "  "
        return f"The {words} of {label} looks typical, case {digest}.  Nothing unusual,, here!!"

    def build(node: dict[str, Any], path: str) -> Any:
        kind = node.get("type")
        if kind == "object":
            return {key: build(sub, key if path == "answer" else f"{path}_{key}")
                    for key, sub in node.get("properties", {}).items()}
        if kind == "array":
            return [build(node.get("items", {}), f"{path}_{i}") for i in range(n)]
        return text(path)

    answer = build(schema, "answer")
    if fault == "missing" and isinstance(answer, dict) and answer:
        first = next(iter(answer))
        if isinstance(answer[first], dict) and answer[first]:
            del answer[first][next(iter(answer[first]))]
        else:
            del answer[first]
    return answer


def _make_handler(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before the answer

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": "fake", "code": status}}, headers)

        def _read_body(self) -> dict[str, Any] | None:
            """The request's JSON object, or None when the body is missing, cut short or not JSON: a
            client killed mid-request sends such bodies, and they must not count as questions."""
            try:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length) if length > 0 else b""
                if len(raw) != length or not raw:
                    return None
                body = json.loads(raw)
            except (ValueError, OSError):
                return None
            return body if isinstance(body, dict) else None

        def do_POST(self) -> None:
            body = self._read_body()
            if body is None:
                self.close_connection = True
                return self._error(400, "fake server: missing or invalid JSON request body")
            if not self.path.endswith("/chat/completions"):
                return self._error(404, f"no route {self.path}")
            with server._lock:
                server.requests.append(body)
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._answer(body)
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _answer(self, body: dict[str, Any]) -> None:
            question = _question(body)
            fault = server._take_fault(question)
            if server.delay_s:
                server._stop.wait(server.delay_s)
            if fault == "hang":
                server._stop.wait(server.hang_s)
            if fault == "429":
                return self._error(429, "Rate limit reached, slow down", {"Retry-After": server.retry_after})
            if fault == "500":
                return self._error(500, "The server had an error while processing your request")
            if fault == "401":
                return self._error(401, "Incorrect API key provided")
            fmt = body.get("response_format") or {}
            if fmt.get("type") == "json_schema" and not server.supports_json_schema:
                return self._error(400, "response_format type json_schema is not supported by this server")
            schema = _schema_of(body)
            if schema is None:
                return self._error(400, "fake server: no JSON schema in the request")
            content = json.dumps(_make_answer(schema, question, fault), ensure_ascii=False)
            if fault == "malformed":
                content = content[: len(content) // 2]
            self._send(200, {
                "id": f"chatcmpl-fake-{len(server.requests)}", "object": "chat.completion", "created": 0,
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": len(json.dumps(body)) // 4, "completion_tokens": len(content) // 4,
                          "total_tokens": len(json.dumps(body)) // 4 + len(content) // 4},
            })

    return Handler


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--no-json-schema", action="store_true")
    args = parser.parse_args()
    fake = FakeLLMServer(supports_json_schema=not args.no_json_schema, delay_s=args.delay_s).start()
    print(fake.base_url, flush=True)
    threading.Event().wait()
