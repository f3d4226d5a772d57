"""Real stream servers on 127.0.0.1 for the stream tests: GStreamer's RTSP server (tests/rtsp_server.py,
run by the system python3) and ffmpeg serving MPEG-TS over HTTP. Each can be killed and restarted on the
same port to test reconnects; every wait is bounded."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtsp_unavailable() -> str | None:
    """Why the RTSP server cannot run here, or None."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the RTSP server needs the system python3 with python3-gi)"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst; Gst.init(None); "
             "assert all(Gst.ElementFactory.find(e) for e in ('videotestsrc', 'x264enc', 'rtph264pay')), 'elements'")
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "probing GStreamer timed out"
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return (f"GStreamer's RTSP server is not installed ({last}); scripts/setup.sh installs "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly")
    return None


def ffmpeg_unavailable() -> str | None:
    return None if shutil.which("ffmpeg") else "ffmpeg is not installed (scripts/setup.sh installs it)"


def listening(port: int) -> bool:
    """True when a socket listens on the TCP port (read from /proc/net/tcp: connecting to probe would use up
    ffmpeg -listen's one client)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f.split()[1].endswith(f":{port:04X}") and f.split()[3] == "0A" for f in lines)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class Server:
    """A server process that can be stopped and started again on the same port."""

    def __init__(self, command: list[str], port: int, url: str) -> None:
        self.command, self.port, self.url = command, port, url
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "GST_DEBUG": "0"})
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def rtsp_server() -> Server:
    reason = rtsp_unavailable()
    if reason:
        pytest.skip(reason)
    port = free_port()
    return Server([SYSTEM_PYTHON, str(RTSP_SCRIPT), str(port)], port, f"rtsp://127.0.0.1:{port}/test")


def http_server(video: Path) -> Server:
    """ffmpeg serving `video` in a loop, in real time, as MPEG-TS over HTTP (one client per process)."""
    reason = ffmpeg_unavailable()
    if reason:
        pytest.skip(reason)
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(video),
               "-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts", "-listen", "1", url]
    return Server(command, port, url)
