"""Find and run the `tritonserver` binary that ships in the nvidia-pytriton wheel.

The wheel carries NVIDIA's real Triton Inference Server (2.51 in nvidia-pytriton 0.7.0) with its
Python backend, built with CUDA but running on CPU. Its backend stub embeds CPython and exchanges
tensors through pybind11 built for numpy 1.x: under numpy 2 every tensor a model returns has the wrong
size ("output tensor shape does not match size of output") and DLPack capsules are refused. So the
models run in a *server environment*: a virtual environment with nvidia-pytriton, numpy<2 and apclip
(`pip install "apclip[cpu,triton-server]"`), found through --server-env or $APCLIP_TRITON_ENV, or
the current interpreter when it has pytriton and numpy<2. The client side (apclip-serve itself,
tritonclient) stays in the project's environment.

The stub links libpython3.X.so of the environment's base interpreter: LD_LIBRARY_PATH gets that
interpreter's LIBDIR and the wheel's own library folder (nvidia_pytriton.libs).
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from apclip.errors import ApclipError, MissingExtraError

INSTALL_HINT = ('create one with: python -m venv ~/.apclip-triton && ~/.apclip-triton/bin/pip install '
                '"apclip[cpu,triton-server]", then pass --server-env ~/.apclip-triton (or set APCLIP_TRITON_ENV)')

_PROBE = r"""
import json, site, sys, sysconfig
out = {"python": sys.executable, "version": "%d.%d" % sys.version_info[:2],
       "libdir": sysconfig.get_config_var("LIBDIR"), "site": site.getsitepackages()}
try:
    import pytriton
    out["pytriton"] = list(pytriton.__path__)[0]
except ImportError as exc:
    out["pytriton_error"] = str(exc)
try:
    import numpy
    out["numpy"] = numpy.__version__
except ImportError:
    out["numpy"] = None
try:
    import apclip.engine.recognizer
    out["apclip"] = True
except Exception as exc:
    out["apclip"] = False
    out["apclip_error"] = str(exc)
print(json.dumps(out))
"""


class ServerUnavailable(MissingExtraError):
    """No usable Triton server environment (exit code 2, like a missing optional package)."""


@dataclass(frozen=True)
class ServerInstall:
    python: Path  # the server environment's interpreter
    version: str  # "3.11"
    libdir: Path  # where libpython3.X.so lives (the stub links it)
    site_dirs: list[Path]  # the environment's site-packages: the models' sys.path
    pytriton: Path  # the pytriton package folder

    @property
    def binary(self) -> Path:
        return self.pytriton / "tritonserver" / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.pytriton.parent / "nvidia_pytriton.libs"

    def stub(self) -> Path:
        return self.pytriton / "tritonserver" / "python_backend_stubs" / self.version / "triton_python_backend_stub"

    def prepare_backends(self, folder: Path) -> Path:
        """A backend directory with the Python backend and the stub for this Python version."""
        python = folder / "python"
        python.mkdir(parents=True, exist_ok=True)
        shipped = self.pytriton / "tritonserver" / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(shipped / name, python / name)
        if not self.stub().is_file():
            raise ServerUnavailable(f"nvidia-pytriton at {self.pytriton} has no backend stub for Python {self.version}")
        shutil.copy2(self.stub(), python / "triton_python_backend_stub")
        return folder

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(self.libdir), str(self.libs)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
        # The stub's interpreter ignores PYTHONPATH (it runs with -E semantics) and starts from its
        # base prefix, whose site-packages may hold numpy 2: the models put these folders first
        # themselves (scale/triton_models/*.py).
        env["APCLIP_SITE_DIRS"] = os.pathsep.join(map(str, self.site_dirs))
        env["PYTHONNOUSERSITE"] = "1"
        env["ORT_DISABLE_TELEMETRY"] = "1"
        env.update(extra or {})
        return env


def find_server(server_env: str | os.PathLike | None = None) -> ServerInstall:
    """The server environment: --server-env, else $APCLIP_TRITON_ENV, else this interpreter."""
    chosen = server_env or os.environ.get("APCLIP_TRITON_ENV")
    if chosen:
        python = Path(chosen) / "bin" / "python"
        if not python.exists():
            raise ServerUnavailable(f"server environment {chosen} has no bin/python; {INSTALL_HINT}")
    else:
        python = Path(sys.executable)
    try:
        probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, PYTHONNOUSERSITE="1"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerUnavailable(f"cannot run {python} ({exc}); {INSTALL_HINT}") from None
    if probe.returncode != 0:
        raise ServerUnavailable(f"{python} failed to describe itself: {probe.stderr.strip()[-300:]}")
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    where = f"the server environment {chosen}" if chosen else f"this interpreter ({python})"
    if "pytriton" not in info:
        raise ServerUnavailable(f"nvidia-pytriton is not installed in {where}; {INSTALL_HINT}")
    if info["numpy"] is None or int(info["numpy"].split(".")[0]) >= 2:
        raise ServerUnavailable(f"{where} has numpy {info['numpy']}: the Triton Python backend stub of nvidia-pytriton "
                                f"needs numpy<2; {INSTALL_HINT}")
    if not info["apclip"]:
        raise ServerUnavailable(f"apclip does not import in {where} ({info.get('apclip_error')}); {INSTALL_HINT}")
    install = ServerInstall(Path(info["python"]), info["version"], Path(info["libdir"]),
                            [Path(p) for p in info["site"]], Path(info["pytriton"]))
    if not install.binary.is_file():
        raise ServerUnavailable(f"{install.binary} is missing: reinstall nvidia-pytriton in {where}")
    return install


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> None:
    """Run in the child between fork and exec: its own session (Ctrl-C reaches apclip-serve only, which
    stops it), and SIGKILL when apclip-serve dies, even by kill -9, so no orphan holds the ports. Triton's
    backend stubs watch their parent and exit when tritonserver is gone (measured: none left after 3 s)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl: nobody would stop us
            os._exit(1)


def describe_exit(code: int | None) -> str:
    """'exit code 3' or 'signal 6 (SIGABRT)' for a Popen return code."""
    if code is not None and code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 (closed again: the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ports:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def pick(cls, http: int, grpc: int, metrics: int) -> "Ports":
        """0 means any free port."""
        return cls(http or free_port(), grpc or free_port(), metrics or free_port())


class TritonServer:
    """One tritonserver process on 127.0.0.1 (or --host) serving a model repository."""

    def __init__(self, install: ServerInstall, repository: Path, work: Path, ports: Ports, *, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, log_file: Path | None = None, verbose: bool = False,
                 http_host: str | None = None, restrict: tuple[str, str] | None = None):
        """http_host: where HTTP listens (default: host); restrict: (header, token) that Triton's inference,
        shared-memory, repository, trace and logging APIs then require on HTTP and gRPC."""
        self.install, self.repository, self.ports, self.host = install, repository, ports, host
        self.http_host = http_host or host
        self.restrict = restrict
        backends = install.prepare_backends(work / "backends")
        self.command = [str(install.binary), "--model-repository", str(repository), "--backend-directory",
                        str(backends), "--http-address", self.http_host, "--http-port", str(ports.http),
                        "--grpc-address", host, "--grpc-port", str(ports.grpc), "--metrics-address", host,
                        "--metrics-port", str(ports.metrics), "--allow-gpu-metrics", "false",
                        "--exit-timeout-secs", "20", "--log-verbose", "1" if verbose else "0"]
        if restrict:
            key, token = restrict
            self.command += [f"--http-restricted-api=inference,shared-memory,model-repository,trace,logging:{key}={token}",
                             f"--grpc-restricted-protocol=shared-memory,model-repository,trace,logging:{key}={token}"]
        self.env = install.environment(env)
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.http_host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    def start(self, timeout: float = 300.0) -> None:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            preexec_fn=_die_with_parent)
        finally:
            if self.log_file:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ApclipError(f"tritonserver stopped ({describe_exit(self.process.returncode)}) while starting"
                                  + (f"; see {self.log_file}" if self.log_file else ""))
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ApclipError(f"tritonserver was not ready after {timeout:.0f} s" + (f"; see {self.log_file}" if self.log_file else ""))

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton unloads its models and exits), SIGKILL after `timeout`; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
