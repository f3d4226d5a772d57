"""apclip-batch: batch inference over a video archive with Ray Data, resumable, one row per video.

    apclip-batch bundle/ --input videos/ --output results.parquet            # local Ray instance
    ray start --head && apclip-batch bundle/ --input list.txt --output r.jsonl --address auto

Rows have the fields of `apclip-infer --json` plus `path`, `duration` (seconds) and `error` (None,
or why the video has no prediction). A rerun with the same --output skips the videos already written.
"""
from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import time
from pathlib import Path

from apclip.errors import ApclipError

from apclip.engine.runners.table import backend_choices
from apclip.engine.scoring.scorers import SCORERS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
LIST_EXTENSIONS = (".txt", ".lst", ".list")


class Terminated(Exception):
    """SIGTERM: stop like Ctrl-C (committed parts stay, the rerun resumes)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apclip-batch", description="Batch inference over many videos with Ray Data.")
    p.add_argument("bundle", help="bundle directory (from apclip-export)")
    p.add_argument("--input", required=True, help="folder (searched recursively for videos), list file "
                                                  "(.txt: one path per line) or glob pattern (quote it)")
    p.add_argument("--output", required=True, help="results file: .parquet or .jsonl")
    p.add_argument("--address", help="join a running Ray cluster (auto, or ray://host:10001); "
                                     "default: start a local instance")
    p.add_argument("--decode-workers", type=int, default=None,
                   help="parallel decode+preprocess tasks (default: as many as Ray schedules)")
    p.add_argument("--encode-workers", type=int, default=1, help="encode+score actors (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each encode actor reserves (default 0)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each encode actor reserves (default 1)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per encode actor (default: ORT's choice)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--object-store-mb", type=int, default=512,
                   help="object store of the local Ray instance in MB (default 512)")
    p.add_argument("--backend", default="auto", choices=backend_choices(), help="vision/text runner (default auto)")
    p.add_argument("--scorer", default="auto", choices=SCORERS, help="MAKA scorer (default auto)")
    p.add_argument("--labels", help="labels file; labels not in the bundle are encoded once per actor")
    p.add_argument("--prompts", help="prompt bank JSON for labels not in the bundle")
    p.add_argument("--topk", type=int, default=5, help="classes per row (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def expand_inputs(spec: str) -> list[str]:
    """--input -> sorted, de-duplicated video paths."""
    path = Path(spec)
    if path.is_dir():
        found = [str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        from apclip.fileio import read_user_text

        lines = [line.strip() for line in read_user_text(path, f"--input list {path}", ApclipError).splitlines()]
        # Relative entries are relative to the list file, so a list travels with its archive.
        found = [entry if os.path.isabs(entry) else str(path.parent / entry)
                 for entry in lines if entry and not entry.startswith("#")]
    elif path.is_file():
        found = [str(path)]
    elif glob.has_magic(spec):
        from apclip.walk import glob_paths

        found = [p for p in glob_paths(spec) if os.path.isfile(p)]  # `**` never loops through symlinks
    else:
        raise ApclipError(f"--input {spec}: no such folder, list file or video")
    if not found:
        raise ApclipError(f"--input {spec}: no videos found (extensions {', '.join(VIDEO_EXTENSIONS)})")
    return sorted(set(found))


def check_arguments(args: argparse.Namespace) -> None:
    for name in ("encode_workers", "decode_workers", "num_cpus", "threads", "topk", "object_store_mb"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ApclipError(f"--{name.replace('_', '-')} {value}: use 1 or more")
    from apclip.limits import max_threads

    if args.threads is not None and args.threads > max_threads():
        raise ApclipError(f"--threads {args.threads}: this machine has {os.cpu_count()} CPUs "
                          f"(use at most {max_threads()})")
    if not (0 <= args.gpus_per_worker <= 64 and 0 <= args.cpus_per_worker <= 1024):  # also refuses nan
        raise ApclipError("--gpus-per-worker / --cpus-per-worker must be in 0..64 / 0..1024")
    if args.gpus_per_worker < 0 or args.cpus_per_worker < 0:
        raise ApclipError("--gpus-per-worker / --cpus-per-worker must not be negative")
    if not Path(args.bundle).is_dir():
        raise ApclipError(f"bundle not found: {args.bundle}")


LOCAL_RAY_ENV = {
    # A local instance phones no one.
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray (2.60) turns a node IP of 127.0.0.1 into the machine's address (services.resolve_ip_for_localhost)
    # unless clusters are off: then node IP = 127.0.0.1 and gcs_server, raylet, workers, the driver and the
    # runtime-env agent all listen on 127.0.0.1 only (measured with /proc/net/tcp; before: `*` and the
    # machine's address). Read when ray is imported, so it is set before.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def start_ray(args: argparse.Namespace, log) -> None:
    from apclip.extras import require

    if not args.address:
        os.environ.update(LOCAL_RAY_ENV)
    ray = require("ray", "scale", "apclip-batch")
    if args.address:  # the user's explicit choice: that cluster's own addresses and settings
        ray.init(address=args.address, log_to_driver=False, configure_logging=False)
        log(f"joined the Ray cluster at {args.address}")
        return
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # the same, where ray was imported before this call
    ray.init(num_cpus=args.num_cpus, object_store_memory=args.object_store_mb * 1024 * 1024,
             include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    log(f"started a local Ray instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")


def _stop_on_sigterm(signum, frame) -> None:
    raise Terminated()


def run(args: argparse.Namespace, log) -> int:
    from apclip.bundle import read_manifest

    from apclip.scale.batch_pipeline import build_dataset
    from apclip.scale.batch_store import ResultStore

    store = ResultStore(args.output)
    paths = expand_inputs(args.input)
    manifest = read_manifest(args.bundle)  # a bad bundle fails here, before Ray starts
    done = store.completed()
    todo = [p for p in paths if p not in done]
    log(f"{len(paths)} video(s): {len(paths) - len(todo)} already in {args.output}, {len(todo)} to do")
    written = 0
    if todo:
        labels = None
        if args.labels:
            from apclip.labels import read_labels

            labels = read_labels(args.labels)
        start_ray(args, log)
        import ray

        # ray.init installs a SIGTERM handler that aborts the process: take it back, so a SIGTERM
        # stops like Ctrl-C (committed parts kept, Ray shut down, exit 130).
        signal.signal(signal.SIGTERM, _stop_on_sigterm)

        try:
            ds = build_dataset(
                todo, bundle=str(Path(args.bundle).resolve()), preprocessing=manifest.preprocessing.to_dict(),
                decode_workers=args.decode_workers, encode_workers=args.encode_workers,
                gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                scorer_kwargs={"backend": args.backend, "labels": labels, "scorer": args.scorer,
                               "threads": args.threads, "topk": args.topk,
                               "prompts": str(Path(args.prompts).resolve()) if args.prompts else None})
            start = time.perf_counter()
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                import json

                written += store.commit(json.loads(record) for record in batch["record"])
                log(f"{len(paths) - len(todo) + written}/{len(paths)} videos "
                    f"({written / (time.perf_counter() - start):.2f}/s)")
        finally:
            ray.shutdown()
    total = store.merge()
    errors = _count_errors(store)
    log(f"wrote {args.output}: {total} row(s), {errors} with an error")
    return 0


def _count_errors(store) -> int:
    return sum(1 for row in store._read_output() if row.get("error"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))

    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        check_arguments(args)
        return run(args, log)
    except (KeyboardInterrupt, Terminated):
        print("apclip-batch: interrupted: committed rows are kept; rerun the same command to finish",
              file=sys.stderr)
        return 130
    except (ApclipError, OSError) as exc:
        if args.debug:
            raise
        print(f"apclip-batch: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2 if isinstance(exc, ImportError) else 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
