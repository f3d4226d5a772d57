"""The HTTP front of apclip-serve: checks every request before tritonserver sees it.

Why a front at all: tritonserver 2.51's HTTP endpoint turns a JSON `data` input into a buffer of
`element count x element size` bytes *before* the request reaches the model or its config
(http_server.cc, `serialized.resize(byte_size)`), so one request declaring shape
[1, 1000000, 1000, 1000, 3] UINT8 with ten bytes of data throws std::bad_alloc and aborts the whole
server (measured: signal 6). No tritonserver option bounds it (no --http-max-input-size in 2.51) and
config.pbtxt dims are checked only after the allocation. The gRPC endpoint checks the byte size
first ("input byte size mismatch", INVALID_ARGUMENT), so it needs no front.

The front listens on --host:--http-port; tritonserver's own HTTP endpoint listens on an ephemeral port
on 127.0.0.1 and accepts inference only with a per-run token header that only the front sends
(--http-restricted-api), so a local process cannot go around the checks. Checked here:
  * the path: inference, health, metadata, config and statistics only (no shared memory, repository,
    trace or logging APIs);
  * the body: Content-Length required, at most `max_body_bytes`, no Content-Encoding (no gzip bombs);
  * the inference header: a JSON object (no NaN/Infinity literals; nesting deeper than Python's recursion
    limit is refused before tritonserver's recursive parser sees it), each input with a
    name, a known datatype and a shape of at most `max_dims` non-negative integers; declared bytes of all
    inputs at most `max_tensor_bytes`; JSON data with exactly the declared number of elements; binary
    data sizes that match the shape and add up to the body. No shared-memory parameters.
Refused requests get 400 (413 for a body over the limit) with Triton's {"error": ...} body.
"""
from __future__ import annotations

import http.client
import json
import math
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DTYPE_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
               "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8, "BYTES": None}
TOKEN_HEADER = "apclip-front-token"
_MODEL = r"/v2/models/[A-Za-z0-9_.-]+(?:/versions/[0-9]+)?"
ALLOWED = {
    "GET": re.compile(rf"^(?:/v2|/v2/health/(?:live|ready)|{_MODEL}|{_MODEL}/(?:ready|config|stats)|/v2/models/stats)$"),
    "POST": re.compile(rf"^{_MODEL}/infer$"),
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "host", "content-length", TOKEN_HEADER}


@dataclass(frozen=True)
class RequestLimits:
    """What one HTTP request may declare (apclip-serve --max-request-mb, --max-dims)."""

    max_body_bytes: int = 256 << 20  # the HTTP body as sent
    max_tensor_bytes: int = 256 << 20  # sum over inputs of element count x element size, as declared
    max_dims: int = 8  # rank of one input tensor (frames are rank 5)


class RequestRefused(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _refuse_constant(name: str):
    raise RequestRefused(f"{name} is not a number the server accepts (send finite values)")


def _count_leaves(data) -> int:
    """Elements of a (possibly nested) JSON data array; iterative, so deep arrays cannot overflow the stack."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (dict,)) or item is None:
            raise RequestRefused("input data must be numbers, booleans or strings")
        else:
            count += 1
    return count


def check_infer_request(body: bytes, header_length: int | None, limits: RequestLimits) -> None:
    """Raise RequestRefused unless `body` is an inference request tritonserver can take without harm."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise RequestRefused(f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body")
    header_bytes = body[:header_length] if header_length is not None else body
    try:
        request = json.loads(header_bytes, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise RequestRefused(f"request body is not JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise RequestRefused('request must be a JSON object with a non-empty "inputs" array')
    declared = binary = 0
    for index, tensor in enumerate(request["inputs"]):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestRefused(f'{where} must be an object with a "name" string')
        where = f"input {tensor['name'][:64]!r}"
        dtype, shape = tensor.get("datatype"), tensor.get("shape")
        if dtype not in DTYPE_BYTES:
            raise RequestRefused(f"{where}: unknown datatype {str(dtype)[:32]!r} (one of {', '.join(DTYPE_BYTES)})")
        if (not isinstance(shape, list) or len(shape) > limits.max_dims
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise RequestRefused(f"{where}: shape must be a list of at most {limits.max_dims} non-negative integers")
        elements = math.prod(shape)
        size = DTYPE_BYTES[dtype]
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestRefused(f"{where}: parameters must be an object")
        if any(key.startswith("shared_memory") for key in params):
            raise RequestRefused(f"{where}: shared-memory inputs are not served")
        if size is not None:
            declared += elements * size
            if declared > limits.max_tensor_bytes:
                raise RequestRefused(f"{where}: shape {shape[:limits.max_dims]} {dtype} declares more than "
                                     f"{limits.max_tensor_bytes} bytes (apclip-serve --max-request-mb)")
        if "binary_data_size" in params:
            length = params["binary_data_size"]
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise RequestRefused(f"{where}: binary_data_size must be a non-negative integer")
            if size is not None and length != elements * size:
                raise RequestRefused(f"{where}: binary_data_size {length} does not match shape {shape} {dtype} "
                                     f"({elements * size} bytes)")
            binary += length
        elif "data" in tensor:
            if not isinstance(tensor["data"], list):
                raise RequestRefused(f"{where}: data must be an array")
            if _count_leaves(tensor["data"]) != elements:
                raise RequestRefused(f"{where}: data has {_count_leaves(tensor['data'])} elements, "
                                     f"shape {shape} declares {elements}")
        else:
            raise RequestRefused(f'{where}: send "data" or binary data (parameters.binary_data_size)')
    if binary != len(body) - len(header_bytes):
        raise RequestRefused(f"binary data sizes add up to {binary} bytes, the body carries "
                             f"{len(body) - len(header_bytes)} after the JSON header")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "GuardServer"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name; Triton logs requests itself
        pass

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, error: RequestRefused) -> None:
        self.close_connection = True  # the rest of a refused body may still be on the wire
        self._reply(error.status, json.dumps({"error": str(error)}).encode(), [("Content-Type", "application/json")])

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Encoding", "identity") != "identity":
            raise RequestRefused("send the body uncompressed with a Content-Length (no chunked or gzip bodies)", 411)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestRefused("Content-Length is not a number") from None
        if length < 0 or length > self.server.limits.max_body_bytes:
            raise RequestRefused(f"a {length}-byte body is over the limit of {self.server.limits.max_body_bytes} "
                                 f"bytes (apclip-serve --max-request-mb)", 413)
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestRefused("the body ended before Content-Length bytes")
        return body

    def _forward(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if not ALLOWED.get(method, re.compile("^$")).match(path):
                raise RequestRefused(f"{method} {path[:100]} is not served by apclip-serve", 403 if method in ALLOWED else 405)
            body = self._read_body() if method == "POST" else b""
            if method == "POST":
                raw = self.headers.get("Inference-Header-Content-Length")
                try:
                    header_length = int(raw) if raw is not None else None
                except ValueError:
                    raise RequestRefused("Inference-Header-Content-Length is not a number") from None
                check_infer_request(body, header_length, self.server.limits)
        except RequestRefused as error:
            self._refuse(error)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers[TOKEN_HEADER] = self.server.token
        connection = http.client.HTTPConnection(*self.server.upstream, timeout=self.server.upstream_timeout)
        try:
            connection.request(method, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            reply = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            self._reply(response.status, payload, reply)
        except OSError as exc:
            self._reply(503, json.dumps({"error": f"tritonserver is not answering: {exc}"}).encode(),
                        [("Content-Type", "application/json")])
        finally:
            connection.close()

    def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's names
        self._forward("GET")

    def do_POST(self):  # noqa: N802
        self._forward("POST")

    def do_PUT(self):  # noqa: N802
        self._forward("PUT")

    def do_DELETE(self):  # noqa: N802
        self._forward("DELETE")


class GuardServer(ThreadingHTTPServer):
    """The checking front, forwarding to tritonserver's HTTP endpoint at `upstream` (host, port)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], upstream: tuple[str, int], token: str, limits: RequestLimits,
                 upstream_timeout: float = 600.0):
        self.upstream, self.token, self.limits, self.upstream_timeout = upstream, token, limits, upstream_timeout
        super().__init__(address, _Handler)

    def finish_request(self, request, client_address):
        request.settimeout(60)  # a client that stops sending mid-request does not hold a thread forever
        super().finish_request(request, client_address)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="apclip-serve-http-front", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (if started) and release the port."""
        if getattr(self, "_thread", None) is not None:
            self.shutdown()
            self._thread = None
        self.server_close()
