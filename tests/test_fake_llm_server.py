"""The fake LLM server itself: a killed client's missing or cut-short body is answered 400 and never
recorded as a question (it used to be recorded as {}, failing the resume test about one run in six)."""
from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from fake_llm_server import FakeLLMServer


def _raw_post(server: FakeLLMServer, body: bytes, announced: int) -> bytes:
    """POST with a Content-Length of `announced` bytes but only `body` sent, then half-close."""
    url = urlsplit(server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        head = (f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.hostname}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {announced}\r\n\r\n").encode()
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)  # what a killed client leaves behind
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_truncated_empty_and_invalid_bodies_are_refused_and_not_recorded():
    whole = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with FakeLLMServer() as server:
        for body, announced in ((whole[:10], len(whole)), (b"", 0), (b"not json", 8), (b"[1, 2]", 6)):
            reply = _raw_post(server, body, announced)
            assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
        assert server.requests == []
