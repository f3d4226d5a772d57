"""apclip-serve's HTTP front: every request tritonserver would mishandle is refused before it is forwarded."""
from __future__ import annotations

import json

import pytest

from apclip.scale.http_guard import RequestLimits, RequestRefused, check_infer_request

LIMITS = RequestLimits(max_body_bytes=1 << 20, max_tensor_bytes=1 << 20)


def frames(shape, **extra):
    return {"name": "frames", "shape": shape, "datatype": "UINT8", **extra}


def body(*inputs) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def test_good_json_and_binary_requests_pass():
    check_infer_request(body(frames([1, 2, 2, 1, 3], data=[[1, 2, 3]] * 4)), None, LIMITS)
    header = body(frames([1, 2, 2, 1, 3], parameters={"binary_data_size": 12}))
    check_infer_request(header + bytes(12), len(header), LIMITS)


@pytest.mark.parametrize("payload, header_length, message", [
    (body(frames([1, 1000000, 1000, 1000, 3], data=list(range(10)))), None, "declares more than"),
    (body(frames([1, 2, 2, 1, 3], data=[1, 2])), None, "data has 2 elements"),
    (body(frames([1, -2, 2, 1, 3], data=[])), None, "non-negative"),
    (body(frames([1] * 9, data=[1])), None, "at most 8"),
    (body(frames(["1"], data=[1])), None, "non-negative integers"),
    (body(frames([True], data=[1])), None, "non-negative integers"),
    (body({"name": "frames", "shape": [1], "datatype": "COMPLEX", "data": [1]}), None, "unknown datatype"),
    (body(frames([1], parameters={"shared_memory_region": "x"})), None, "shared-memory"),
    (body(frames([1])), None, 'send "data"'),
    (body(frames([1], data=[{"a": 1}])), None, "numbers"),
    (b'{"inputs": [{"name": "views", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', None, "finite"),
    (b'{"inputs": [{"name": "views", "shape": [1], "datatype": "FP32", "data": [-Infinity]}]}', None, "finite"),
    (b"[1, 2]", None, "JSON object"),
    (b'{"inputs": 5}', None, "JSON object"),
    (b"\xff\xfe", None, "not JSON"),
    (b"[" * 200_000, None, "not JSON"),
    (body(frames([4], parameters={"binary_data_size": 10})), None, "does not match"),
    (body(frames([4], parameters={"binary_data_size": 4})) + bytes(3), len(body(frames([4], parameters={"binary_data_size": 4}))), "add up"),
    (b"{}", 50, "does not fit"),
])
def test_hostile_requests_are_refused_with_one_line(payload, header_length, message):
    with pytest.raises(RequestRefused, match=message) as info:
        check_infer_request(payload, header_length, LIMITS)
    assert "\n" not in str(info.value) and info.value.status == 400


def test_declared_bytes_add_up_over_inputs():
    half = frames([1, 1, 512, 1024, 1], parameters={"binary_data_size": 512 * 1024})
    header = body(half, dict(half, name="views"), dict(half, name="other"))
    with pytest.raises(RequestRefused, match="declares more than"):
        check_infer_request(header + bytes(3 * 512 * 1024), len(header), LIMITS)
