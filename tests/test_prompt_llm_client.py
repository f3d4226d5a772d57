"""The openai client wrapper against a real local HTTP server with faults (never the internet)."""
from __future__ import annotations

import threading
import time

import pytest
from fake_llm_server import FakeLLMServer

from apclip.export.prompts.client import (
    ChatClient, LLMError, LLMFatalError, LLMSettings, estimate_cost, price_per_mtok, retry_after_seconds,
    run_bounded, validate_json,
)
from apclip.export.prompts.graph import default_graph
from apclip.export.prompts.strategies import ActionCentric

STRATEGY = ActionCentric(3, default_graph())


@pytest.fixture()
def server():
    with FakeLLMServer() as fake:
        yield fake


def make_client(server, delays=None, **overrides):
    settings = dict(model="fake", base_url=server.base_url, timeout_s=5.0, max_retries=3, backoff_s=0.001,
                    backoff_max_s=0.01, repair_attempts=2)
    settings.update(overrides)
    sleep = delays.append if delays is not None else (lambda s: None)
    return ChatClient(LLMSettings(**settings), "test-key", sleep=sleep)


def ask(client, label="archery"):
    request = STRATEGY.request(label, 0)
    return client.complete_json(request.messages, request.schema, request.schema_name, STRATEGY.validate)


def test_structured_answer_is_parsed_and_usage_counted(server):
    client = make_client(server)
    answer = ask(client)
    assert not validate_json(answer, STRATEGY.schema)
    assert set(answer) == {"scene", "actor", "body"} and len(answer["body"]) == 4
    sent = server.requests[0]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert client.usage.requests == 1 and client.usage.prompt_tokens > 0 and client.usage.completion_tokens > 0


def test_429_honours_retry_after(server):
    server.retry_after = "7"
    server.add_fault("429", times=2)
    delays = []
    client = make_client(server, delays)
    ask(client)
    assert len(server.requests) == 3 and client.usage.retries == 2
    assert len(delays) == 2 and all(d >= 7.0 for d in delays)  # the header wins over the 1 ms backoff


def test_500_is_retried_with_growing_jittered_backoff(server):
    server.add_fault("500", times=3)
    delays = []
    ask(make_client(server, delays, backoff_s=1.0, backoff_max_s=100.0))
    assert len(delays) == 3
    for attempt, delay in enumerate(delays):
        assert 0.5 * 2 ** attempt <= delay <= 2 ** attempt  # equal jitter: half fixed, half random


def test_retries_are_bounded(server):
    server.add_fault("500", times=10)
    with pytest.raises(LLMError, match="HTTP 500 after 3 attempt"):
        ask(make_client(server, max_retries=2))
    assert len(server.requests) == 3


def test_a_hung_request_times_out_and_is_retried():
    with FakeLLMServer(hang_s=3.0) as server:
        server.add_fault("hang")
        client = make_client(server, timeout_s=0.3)
        answer = ask(client)
        assert "scene" in answer and client.usage.retries == 1 and len(server.requests) == 2


@pytest.mark.parametrize("fault", ["malformed", "missing", "empty"])
def test_invalid_answers_are_repaired(server, fault):
    server.add_fault(fault)
    client = make_client(server)
    answer = ask(client)
    assert not validate_json(answer, STRATEGY.schema)
    assert client.usage.repairs == 1 and len(server.requests) == 2
    repair = server.requests[1]["messages"]
    assert repair[-2]["role"] == "assistant" and repair[-1]["role"] == "user"
    assert repair[-1]["content"].startswith("That reply is invalid")


def test_invalid_answers_fail_after_the_repair_limit(server):
    server.add_fault("missing", times=5)
    with pytest.raises(LLMError, match="still invalid after 2 repair"):
        ask(make_client(server))
    assert len(server.requests) == 3


def test_server_without_json_schema_gets_instructions_instead():
    with FakeLLMServer(supports_json_schema=False) as server:
        client = make_client(server)
        first = ask(client)
        second = ask(client, "juggling")
        assert not validate_json(first, STRATEGY.schema) and not validate_json(second, STRATEGY.schema)
        assert not client.structured_output
        assert [("response_format" in r) for r in server.requests] == [True, False, False]  # falls back once
        system = [m["content"] for m in server.requests[1]["messages"] if m["role"] == "system"]
        assert any(s.startswith("Reply with a single JSON object") for s in system)


def test_authentication_errors_are_fatal(server):
    server.add_fault("401", times=5)
    with pytest.raises(LLMFatalError, match="401"):
        ask(make_client(server))
    assert len(server.requests) == 1  # not retried


def test_missing_api_key_is_a_clear_error(monkeypatch, server):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY is not set"):
        ChatClient.from_env(LLMSettings(base_url=server.base_url))


def test_missing_openai_names_the_extra(monkeypatch, tmp_path, capsys):
    import sys

    from apclip.errors import MissingExtraError
    from apclip.export.prompts.cli import main

    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    monkeypatch.setenv("OPENAI_API_KEY", "test-dummy-key")
    with pytest.raises(MissingExtraError, match=r'pip install -c constraints.txt -e "\.\[llm\]"'):
        ChatClient(LLMSettings(), "test-key")
    (tmp_path / "labels.txt").write_text("archery\n", encoding="utf-8")
    # exit 2: a missing optional package, like a usage error (the same for every command)
    assert main(["generate", "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "b.json")]) == 2
    assert '-e ".[llm]"' in capsys.readouterr().err


def test_run_bounded_limits_concurrency_and_returns_every_result():
    lock = threading.Lock()
    active, peak = [0], [0]

    def work(i):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        if i == 5:
            raise ValueError("five")
        return i * i

    results = dict(run_bounded(work, range(12), concurrency=3))
    assert peak[0] <= 3
    assert isinstance(results.pop(5), ValueError)
    assert results == {i: i * i for i in range(12) if i != 5}


def test_concurrent_requests_reach_the_server_in_parallel():
    with FakeLLMServer(delay_s=0.05) as server:
        client = make_client(server)
        results = list(run_bounded(lambda label: ask(client, label), [f"action {i}" for i in range(8)], 4))
        assert len(results) == 8 and not any(isinstance(r, Exception) for _, r in results)
        assert 1 < server.max_in_flight <= 4


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < retry_after_seconds({"retry-after": future}) <= 120


def test_cost_estimate():
    assert price_per_mtok("unknown-model") is None
    assert price_per_mtok("unknown-model", 1.0, 2.0) == (1.0, 2.0)
    assert estimate_cost(1_000_000, 500_000, (1.0, 2.0)) == pytest.approx(2.0)
    assert estimate_cost(10, 10, None) is None


def test_timeout_bounds_the_whole_request_against_a_dripping_server():
    """A server that sends one byte every 3 s never trips a per-read timeout; --timeout-s 5 ends in ~5 s."""
    import socket
    import threading
    import time

    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def drip(conn):
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while not stop.wait(3.0):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        client = ChatClient(LLMSettings(model="fake", base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1",
                                        timeout_s=5.0, max_retries=0), "test-key")
        start = time.monotonic()
        with pytest.raises(LLMError, match="RequestDeadline|within 5 s"):
            ask(client)
        assert time.monotonic() - start < 8.0
    finally:
        stop.set()
        listener.close()
