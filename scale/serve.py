"""apclip-serve: serve a bundle through NVIDIA Triton Inference Server (HTTP, gRPC, metrics).

    apclip-serve bundle/ --server-env ~/.apclip-triton [--http-port 8000] [--grpc-port 8001]

Models (Python backend, dynamic batching across requests):
  apclip_clip    frames uint8 [B, N, H, W, 3] RGB, or views float32 [B, Nv, 3, R, R], and an optional
                 label_set [B, 1] -> labels [B, k], scores [B, k], all_scores [B, K]
  apclip_labels  labels [L] -> label_set [1] (id to pass to apclip_clip), classes [1], encoded [1]
Endpoints: /v2/health/ready and /v2/health/live (HTTP), Triton's Prometheus metrics on --metrics-port.
Port 0 picks a free port; the `ready:` line on stderr names them. Ctrl-C or SIGTERM stops the server.

HTTP goes through apclip-serve's checking front (scale/http_guard.py: declared shapes and sizes are
checked before tritonserver allocates anything); tritonserver's own HTTP endpoint listens on an internal
127.0.0.1 port and serves inference only to the front. If tritonserver dies anyway, apclip-serve says
so and exits with status 1 (no restart: a supervisor such as systemd decides); if apclip-serve dies,
even by kill -9, the kernel kills tritonserver (PR_SET_PDEATHSIG), so a restart finds its ports free.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tempfile
import threading
from pathlib import Path

from apclip.bundle import read_manifest
from apclip.errors import ApclipError

from apclip.engine.runners.table import backend_choices
from apclip.engine.scoring.scorers import SCORERS
from apclip.scale.triton_config import ModelConfig, Tensor
from apclip.scale.triton_repo import model_source

CLIP_MODEL = "apclip_clip"
LABELS_MODEL = "apclip_labels"


def clip_config(resolution: int, *, max_batch: int, max_queue_delay_us: int, instances: int,
                parameters: dict[str, str]) -> ModelConfig:
    r = resolution
    return ModelConfig(
        CLIP_MODEL,
        # Ragged: clips of different lengths and sizes may share one batch (the model handles each).
        [Tensor("frames", "TYPE_UINT8", [-1, -1, -1, 3], optional=True, allow_ragged_batch=True),
         Tensor("views", "TYPE_FP32", [-1, 3, r, r], optional=True, allow_ragged_batch=True),
         Tensor("label_set", "TYPE_STRING", [1], optional=True)],
        [Tensor("labels", "TYPE_STRING", [-1]), Tensor("scores", "TYPE_FP32", [-1]),
         Tensor("all_scores", "TYPE_FP32", [-1])],
        max_batch_size=max_batch, backend="python", instances=instances, dynamic_batching=True,
        max_queue_delay_us=max_queue_delay_us, parameters=parameters)


def labels_config(parameters: dict[str, str]) -> ModelConfig:
    return ModelConfig(LABELS_MODEL, [Tensor("labels", "TYPE_STRING", [-1])],
                       [Tensor("label_set", "TYPE_STRING", [1]), Tensor("classes", "TYPE_INT32", [1]),
                        Tensor("encoded", "TYPE_INT32", [1])], backend="python", parameters=parameters)


def write_serving_repo(folder: Path, bundle: Path, *, max_batch: int, max_queue_delay_us: int, instances: int,
                       backend: str, scorer: str, threads: int | None, topk: int, prompts: Path | None,
                       state_dir: Path, max_labels: int = 4096) -> Path:
    """The run-time repository of apclip-serve (models import apclip from the server environment)."""
    manifest = read_manifest(bundle)  # a bad bundle fails here, before the server starts
    parameters = {"bundle": str(bundle), "backend": backend, "scorer": scorer, "threads": str(threads or 0),
                  "topk": str(topk), "state_dir": str(state_dir), "prompts": str(prompts or ""),
                  "max_labels": str(max_labels)}
    for config, source in ((clip_config(manifest.preprocessing.resolution, max_batch=max_batch,
                                        max_queue_delay_us=max_queue_delay_us, instances=instances,
                                        parameters=parameters), "clip"),
                           (labels_config(parameters), "labels")):
        (folder / config.name / "1").mkdir(parents=True, exist_ok=True)
        (folder / config.name / "config.pbtxt").write_text(config.pbtxt(), encoding="utf-8")
        (folder / config.name / "1" / "model.py").write_text(model_source(source), encoding="utf-8")
    return folder


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apclip-serve", description="Serve a bundle with NVIDIA Triton Inference Server.")
    p.add_argument("bundle", help="bundle directory (from apclip-export)")
    p.add_argument("--server-env", help="virtual environment with nvidia-pytriton, numpy<2 and apclip "
                                        "(default: $APCLIP_TRITON_ENV, else this interpreter)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000; 0: any free port)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0: any free port)")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (default 8002; 0: any free port)")
    p.add_argument("--max-batch", type=int, default=8, help="clips batched into one encoder call (default 8)")
    p.add_argument("--max-queue-delay-us", type=int, default=5000,
                   help="longest wait for more requests to batch (default 5000 us)")
    p.add_argument("--instances", type=int, default=1, help="apclip_clip model instances (default 1)")
    p.add_argument("--backend", default="auto", choices=backend_choices(), help="vision/text runner (default auto)")
    p.add_argument("--scorer", default="auto", choices=SCORERS, help="MAKA scorer (default auto)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per model instance (default: ORT's choice)")
    p.add_argument("--topk", type=int, default=5, help="labels and scores per clip (default 5)")
    p.add_argument("--prompts", help="prompt bank JSON for labels registered through apclip_labels")
    p.add_argument("--bpe-vocab", help="CLIP's bpe_simple_vocab_16e6.txt.gz for apclip_labels (default: "
                                       "$APCLIP_BPE_VOCAB, else the installed open_clip_torch's)")
    p.add_argument("--work-dir", help="folder for the repository, label sets and the server log "
                                      "(default: a temporary folder, removed at exit)")
    p.add_argument("--max-request-mb", type=float, default=256,
                   help="largest HTTP body and largest declared input size of one request, MiB (default 256)")
    p.add_argument("--max-labels", type=int, default=4096,
                   help="labels one apclip_labels request may register (default 4096)")
    p.add_argument("--verbose", action="store_true", help="Triton's verbose log")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    for name in ("max_batch", "instances", "topk", "max_labels"):
        if getattr(args, name) < 1:
            raise ApclipError(f"--{name.replace('_', '-')} {getattr(args, name)}: use 1 or more")
    if args.threads is not None and args.threads < 1:
        raise ApclipError(f"--threads {args.threads}: use 1 or more")
    if not 0 < args.max_request_mb <= 4096:  # also refuses nan
        raise ApclipError(f"--max-request-mb {args.max_request_mb}: use a size in (0, 4096]")
    from apclip.limits import max_threads

    if args.threads is not None and args.threads > max_threads():
        raise ApclipError(f"--threads {args.threads}: this machine has {os.cpu_count()} CPUs "
                          f"(use at most {max_threads()})")
    if args.max_queue_delay_us < 0:
        raise ApclipError("--max-queue-delay-us must not be negative")
    for name in ("http_port", "grpc_port", "metrics_port"):
        if not 0 <= getattr(args, name) <= 65535:
            raise ApclipError(f"--{name.replace('_', '-')} {getattr(args, name)}: not a port")
    if not Path(args.bundle).is_dir():
        raise ApclipError(f"bundle not found: {args.bundle}")


def serve(args: argparse.Namespace, work: Path, stop: threading.Event, log) -> int:
    from apclip.scale.triton_server import Ports, TritonServer, describe_exit, find_server

    install = find_server(args.server_env)
    state = work / "state"
    (state / "label_sets").mkdir(parents=True, exist_ok=True)
    repo = write_serving_repo(work / "repository", Path(args.bundle).resolve(), max_batch=args.max_batch,
                              max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                              backend=args.backend, scorer=args.scorer, threads=args.threads, topk=args.topk,
                              prompts=Path(args.prompts).resolve() if args.prompts else None, state_dir=state,
                              max_labels=args.max_labels)
    from apclip.scale.http_guard import TOKEN_HEADER, GuardServer, RequestLimits

    limit = int(args.max_request_mb * (1 << 20))
    limits = RequestLimits(max_body_bytes=limit, max_tensor_bytes=limit)
    # The front binds first, so a taken --http-port fails before tritonserver starts.
    token = secrets.token_hex(16)
    front = GuardServer((args.host, args.http_port), ("127.0.0.1", 0), token, limits)
    ports = Ports.pick(0, args.grpc_port, args.metrics_port)  # tritonserver's HTTP: internal, loopback
    log_file = work / "tritonserver.log"
    env = {"APCLIP_CACHE_DIR": os.environ.get("APCLIP_CACHE_DIR", str(state / "cache"))}
    from apclip.tokenizer import VocabularyNotFound, find_vocab

    try:  # found here (this environment may have open_clip_torch), handed to the server's models
        env["APCLIP_BPE_VOCAB"] = str(find_vocab(args.bpe_vocab).resolve())
    except VocabularyNotFound as exc:
        if args.bpe_vocab:
            raise
        log(f"note: apclip_labels can reuse only the bundle's labels: {exc}")
    server = TritonServer(install, repo, work, ports, host=args.host, log_file=log_file, verbose=args.verbose,
                          env=env, http_host="127.0.0.1", restrict=(TOKEN_HEADER, token))
    front.upstream = ("127.0.0.1", ports.http)
    log(f"starting tritonserver ({install.binary}) on {args.host}; log: {log_file}")
    try:
        server.start()
        front.start()  # after tritonserver is ready: no request waits on a starting server
        host, port = front.server_address[:2]
        log(f"ready: http {host}:{port} grpc {server.grpc_url} metrics {args.host}:{ports.metrics} "
            f"models {CLIP_MODEL}, {LABELS_MODEL}")
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                raise ApclipError(f"tritonserver died ({describe_exit(server.process.returncode)}); not restarted; "
                                  f"see {log_file}")
    finally:
        front.close()
        code = server.stop()
        log(f"tritonserver stopped (exit code {code})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    temporary = None
    try:
        check_arguments(args)
        if args.work_dir:
            work = Path(args.work_dir).resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            temporary = tempfile.TemporaryDirectory(prefix="apclip-serve-")
            work = Path(temporary.name)
        return serve(args, work, stop, log)
    except (ApclipError, OSError) as exc:
        print(f"apclip-serve: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2 if isinstance(exc, ImportError) else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if temporary is not None:
            temporary.cleanup()


if __name__ == "__main__":
    sys.exit(main())
