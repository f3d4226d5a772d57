"""apclip-serve: the real tritonserver (from the nvidia-pytriton wheel) on 127.0.0.1, ephemeral ports.

Clips sent over HTTP and gRPC get the Recognizer's top-5; concurrent requests are batched; run-time
label sets are encoded once; malformed requests get errors while the server keeps serving; SIGTERM
stops it cleanly. The server runs from the server environment (scripts/setup.sh makes .venv-serve).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def server_env() -> str:
    return os.environ.get("APCLIP_TRITON_ENV") or str(ROOT / ".venv-serve")


@pytest.fixture(scope="session")
def triton_install():
    from apclip.scale.triton_server import ServerUnavailable, find_server

    try:
        return find_server(server_env())
    except ServerUnavailable as exc:
        pytest.skip(f"no Triton server environment: {exc}")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    from apclip.testing.videos import write_test_video

    root = tmp_path_factory.mktemp("serve_videos")
    return [write_test_video(root / f"v{i}.avi", frames=20 + 7 * i, size=(96, 72), fps=25.0) for i in range(3)]


def rgb_frames(video: Path) -> np.ndarray:
    from apclip.engine.video.sources import open_source

    with open_source(video) as source:
        return np.ascontiguousarray(np.stack([f.image for f in source.frames()])[..., ::-1])  # BGR -> RGB


@pytest.fixture(scope="module")
def server(triton_install, tiny_bundle, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    command = [sys.executable, "-m", "apclip.scale.serve", str(tiny_bundle), "--server-env", server_env(),
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--threads", "1",
               "--max-batch", "8", "--max-queue-delay-us", "300000", "--work-dir", str(work)]
    env = dict(os.environ, APCLIP_CACHE_DIR=str(work / "cache"))
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    ready = None
    deadline = time.monotonic() + 300
    while ready is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        ready = re.search(r"ready: http (\S+) grpc (\S+) metrics (\S+)", line)
    if ready is None:
        proc.kill()
        log = (work / "tritonserver.log").read_text() if (work / "tritonserver.log").exists() else ""
        pytest.fail("apclip-serve did not become ready:\n" + "".join(lines) + log[-3000:])
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.extend(proc.stderr), daemon=True)
    reader.start()
    info = {"http": ready[1], "grpc": ready[2], "metrics": ready[3], "proc": proc, "work": work, "stderr": rest}
    yield info
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@contextlib.contextmanager
def connect(module, url: str):
    """A client whose connections are closed afterwards: Triton's shutdown waits for open ones."""
    client = module.InferenceServerClient(url)
    try:
        yield client
    finally:
        client.close()


def frames_input(module, frames: np.ndarray, dtype: str = "UINT8"):
    tensor = module.InferInput("frames", [1, *frames.shape], dtype)
    tensor.set_data_from_numpy(frames[None])
    return tensor


def test_http_and_grpc_give_the_recognizers_top5(server, tiny_bundle, videos):
    from apclip.engine.recognizer import Recognizer

    rec = Recognizer.from_bundle(tiny_bundle, threads=1)
    with connect(httpclient, server["http"]) as http, connect(grpcclient, server["grpc"]) as grpc:
        check_top5(rec, http, grpc, videos)


def check_top5(rec, http, grpc, videos):
    from apclip.engine.video.clips import load_clip
    from apclip.engine.video.preprocess import flatten_views

    assert http.is_server_live() and http.is_server_ready() and grpc.is_server_ready()
    assert http.is_model_ready("apclip_clip") and grpc.is_model_ready("apclip_labels")
    for video in videos:
        want = rec.predict(video)
        frames = rgb_frames(video)
        views = flatten_views(load_clip(video, rec.spec).views)  # [V*T, 3, R, R]
        view_input = httpclient.InferInput("views", [1, *views.shape], "FP32")
        view_input.set_data_from_numpy(views[None])
        results = [http.infer("apclip_clip", [frames_input(httpclient, frames)]),
                   grpc.infer("apclip_clip", [frames_input(grpcclient, frames)]),
                   http.infer("apclip_clip", [view_input])]
        for result in results:
            labels = [label.decode() for label in result.as_numpy("labels")[0]]
            assert labels == [t.label for t in want.top], video
            np.testing.assert_allclose(result.as_numpy("scores")[0], [t.score for t in want.top], atol=1e-5)
            np.testing.assert_allclose(result.as_numpy("all_scores")[0], want.scores, atol=1e-5)


def test_concurrent_requests_are_batched(server, videos):
    frames = [rgb_frames(v) for v in videos]

    def one(i: int) -> list[str]:
        with connect(httpclient, server["http"]) as client:
            result = client.infer("apclip_clip", [frames_input(httpclient, frames[i % len(frames)])])
        return [label.decode() for label in result.as_numpy("labels")[0]]

    serial = [one(i) for i in range(len(frames))]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(one, range(16)))
    assert concurrent == [serial[i % len(frames)] for i in range(16)]  # batching changes no answer
    with connect(httpclient, server["http"]) as client:
        stats = client.get_inference_statistics("apclip_clip")
    sizes = {int(b["batch_size"]) for b in stats["model_stats"][0]["batch_stats"]}
    assert max(sizes) > 1, f"no request was batched with another: batch sizes {sorted(sizes)}"


def test_run_time_labels_are_encoded_once_and_match_the_recognizer(server, tiny_bundle, videos):
    labels = ["surfing water", "cooking pasta", "walking a dog"]  # one from the bundle, two new
    with connect(grpcclient, server["grpc"]) as client:
        check_labels(client, tiny_bundle, videos, labels)


def check_labels(client, tiny_bundle, videos, labels):
    from apclip.engine.recognizer import Recognizer

    request = grpcclient.InferInput("labels", [len(labels)], "BYTES")
    request.set_data_from_numpy(np.array([label.encode() for label in labels], dtype=np.object_))
    first = client.infer("apclip_labels", [request])
    second = client.infer("apclip_labels", [request])
    set_id = first.as_numpy("label_set")[0]
    assert second.as_numpy("label_set")[0] == set_id
    assert first.as_numpy("classes")[0] == 3 and first.as_numpy("encoded")[0] == 2
    assert second.as_numpy("encoded")[0] == 0  # cached: the text encoder did not run again
    choose = grpcclient.InferInput("label_set", [1, 1], "BYTES")
    choose.set_data_from_numpy(np.array([[set_id]], dtype=np.object_))
    result = client.infer("apclip_clip", [frames_input(grpcclient, rgb_frames(videos[1])), choose])
    want = Recognizer.from_bundle(tiny_bundle, labels=labels, threads=1, use_cache=False).predict(videos[1])
    assert [label.decode() for label in result.as_numpy("labels")[0]] == [t.label for t in want.top]
    np.testing.assert_allclose(result.as_numpy("all_scores")[0], want.scores, atol=1e-5)


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server, videos):
    with connect(httpclient, server["http"]) as client:
        check_malformed(client, videos)


def check_malformed(client, videos):
    good = rgb_frames(videos[0])
    cases = {
        "wrong dtype": [frames_input(httpclient, good.astype(np.float32), "FP32")],
        "wrong rank": [frames_input(httpclient, good[..., 0])],
        "four channels": [frames_input(httpclient, np.concatenate([good, good[..., :1]], axis=-1))],
        "empty": [frames_input(httpclient, good[:0])],
        "no input": [],
    }
    unknown = httpclient.InferInput("label_set", [1, 1], "BYTES")
    unknown.set_data_from_numpy(np.array([[b"0123456789abcdef"]], dtype=np.object_))
    cases["unknown label set"] = [frames_input(httpclient, good), unknown]
    messages = {}
    for name, inputs in cases.items():
        with pytest.raises(InferenceServerException) as info:
            client.infer("apclip_clip", inputs)
        messages[name] = str(info.value)
    assert "UINT8" in messages["wrong dtype"] and "shape" in messages["wrong rank"]
    assert "empty" in messages["empty"] and "apclip_labels" in messages["unknown label set"]
    assert client.is_server_ready()
    result = client.infer("apclip_clip", [frames_input(httpclient, good)])
    assert result.as_numpy("labels").shape == (1, 5)


def test_health_and_metrics_endpoints(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/apclip_clip/ready"):
        with urllib.request.urlopen(f"http://{server['http']}{path}", timeout=10) as response:
            assert response.status == 200, path
    with urllib.request.urlopen(f"http://{server['metrics']}/metrics", timeout=10) as response:
        text = response.read().decode()
    success = re.search(r'nv_inference_request_success\{model="apclip_clip",version="1"\} (\d+)', text)
    assert success and int(success[1]) >= 1, text[:2000]
    failure = re.search(r'nv_inference_request_failure\{[^}]*model="apclip_clip"[^}]*\} (\d+)', text)
    assert failure is not None


def raw_post(address: str, body: bytes, headers: dict | None = None, path: str = "/v2/models/apclip_clip/infer"):
    import http.client

    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, body, headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def test_hostile_http_requests_get_4xx_and_the_server_keeps_serving(server, videos):
    """The declared shape [1, 1000000, 1000, 1000, 3] with ten bytes aborted tritonserver (std::bad_alloc)."""
    import json

    huge = {"inputs": [{"name": "frames", "shape": [1, 1000000, 1000, 1000, 3], "datatype": "UINT8",
                        "data": list(range(10))}]}
    header = json.dumps({"inputs": [{"name": "frames", "shape": [1, 1000000, 1000, 1000, 3], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 10}}]}).encode()
    cases = {
        "huge JSON shape": (json.dumps(huge).encode(), {}),
        "huge binary shape": (header + bytes(10), {"Inference-Header-Content-Length": str(len(header))}),
        "garbage": (b"\x00\xffnot json", {}),
        "array": (b"[1, 2, 3]", {}),
        "deep": (b"[" * 200_000 + b"]" * 200_000, {}),
        "NaN literal": (b'{"inputs": [{"name": "views", "shape": [1, 1, 3, 1, 1], "datatype": "FP32", '
                        b'"data": [NaN, 0, 0]}]}', {}),
        "lying data": (b'{"inputs": [{"name": "frames", "shape": [1, 2, 2, 2, 3], "datatype": "UINT8", '
                       b'"data": [1, 2, 3]}]}', {}),
        "gzip body": (b"\x1f\x8b", {"Content-Encoding": "gzip"}),
    }
    for name, (body, headers) in cases.items():
        status, text = raw_post(server["http"], body, headers)
        assert 400 <= status < 500, (name, status, text)
        assert '"error"' in text, name
    status, _ = raw_post(server["http"], b"{}", path="/v2/repository/models/apclip_clip/unload")
    assert status == 403  # only inference, health, metadata and statistics are served
    nan_views = np.full((1, 8, 3, 32, 32), np.nan, np.float32)
    for module, url in ((httpclient, server["http"]), (grpcclient, server["grpc"])):
        with connect(module, url) as client:
            tensor = module.InferInput("views", list(nan_views.shape), "FP32")
            tensor.set_data_from_numpy(nan_views)
            with pytest.raises(InferenceServerException, match="NaN"):
                client.infer("apclip_clip", [tensor])
    assert server["proc"].poll() is None
    with connect(httpclient, server["http"]) as client:
        assert client.infer("apclip_clip", [frames_input(httpclient, rgb_frames(videos[0]))]).as_numpy(
            "labels").shape == (1, 5)


def test_serving_listens_on_loopback_only_and_tritons_own_http_needs_the_front(server):
    from apclip.testing.sockets import descendants, listening, non_loopback

    pids = descendants(server["proc"].pid)
    sockets = listening(pids)
    assert len(sockets) >= 4 and not non_loopback(pids), sockets  # front, triton http, grpc, metrics
    front_port = int(server["http"].rsplit(":", 1)[1])
    internal = [port for pid, _, port in sockets if pid != server["proc"].pid
                and port not in (front_port, int(server["grpc"].rsplit(":", 1)[1]),
                                 int(server["metrics"].rsplit(":", 1)[1]))]
    assert len(internal) == 1, sockets
    status, text = raw_post(f"127.0.0.1:{internal[0]}", b'{"inputs": []}')
    assert status == 403 and "restricted" in text  # a local process cannot go around the checks


def test_zz_sigterm_stops_the_server_cleanly(server):
    """After the other server tests (file order): the fixture's server is stopped here."""
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    time.sleep(0.5)
    assert any("tritonserver stopped (exit code 0)" in line for line in server["stderr"]), server["stderr"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{server['http']}/v2/health/live", timeout=2)


def test_missing_server_environment_is_a_one_line_usage_error(tiny_bundle, tmp_path):
    from apclip.scale.serve import main

    code = main([str(tiny_bundle), "--server-env", str(tmp_path / "nowhere")])
    assert code == 2


def wait_ready(proc, lines: list[str], timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            return None
        lines.append(line)
        if "ready: http" in line:
            return line
    return None


def test_zzz_kill_9_leaves_no_tritonserver_and_the_same_ports_serve_again(server, tiny_bundle, tmp_path):
    """After test_zz_sigterm (file order): restart on the fixture's ports, kill -9 apclip-serve, nothing remains."""
    from apclip.testing.sockets import descendants

    ports = [server[key].rsplit(":", 1)[1] for key in ("http", "grpc", "metrics")]
    command = [sys.executable, "-m", "apclip.scale.serve", str(tiny_bundle), "--server-env", server_env(),
               "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2], "--threads", "1",
               "--work-dir", str(tmp_path)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, APCLIP_CACHE_DIR=str(tmp_path / "cache")))
    lines: list[str] = []
    try:
        assert wait_ready(proc, lines), "".join(lines)
        below = descendants(proc.pid) - {proc.pid}
        assert below, "no tritonserver under apclip-serve"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in below):
            time.sleep(0.2)
        alive = [pid for pid in below if os.path.exists(f"/proc/{pid}")
                 and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        assert not alive, f"left behind after kill -9: {alive}"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{server['http']}/v2/health/live", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tritonserver_death_is_reported_with_its_signal():
    from apclip.scale.triton_server import describe_exit

    assert describe_exit(-6) == "signal 6 (SIGABRT)" and describe_exit(3) == "exit code 3"
