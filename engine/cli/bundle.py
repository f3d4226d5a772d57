"""apclip-bundle: look inside a bundle (`info`) and check it (`verify`), without torch.

    apclip-bundle info bundle/       labels, preprocessing, frames/views, backends, engines, sizes, versions
    apclip-bundle verify bundle/     every file's sha256, then every file loaded; exit 0 only if all pass

Subcommands live in COMMANDS. Packages outside the engine add theirs as entry points of the group
`apclip.bundle_commands`, each a `Command` (export's `build-engine`), so the engine never imports them.
"""
from __future__ import annotations

from apclip.safe_text import terminal_safe

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from apclip.cli_common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, add_version, exit_code, silence_broken_pipe
from apclip.errors import ApclipError

PROG = "apclip-bundle"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]  # adds the subcommand's arguments
    run: Callable[[argparse.Namespace], int]  # returns the exit code


COMMANDS: dict[str, Command] = {}


def register(command: Command) -> Command:
    COMMANDS[command.name] = command
    return command


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


# -- info ------------------------------------------------------------------------------------------
def bundle_info(path: str) -> dict[str, Any]:
    """What `info` prints, as data (read from the manifest; no file is hashed or loaded)."""
    from apclip.bundle import VOCAB_FILE, read_manifest

    manifest = read_manifest(path, verify=False)
    raw, pre = manifest.raw, manifest.preprocessing
    present = sorted(name for name in manifest.files if (manifest.path / name).is_file())
    from apclip.engine.runners.engine_cache import listed_engines

    engines = {name: _engine_summary(entry) for name, entry in listed_engines(manifest).items()}
    backends = []
    if manifest.has("vision.onnx") and manifest.has("text.onnx"):
        backends.append("onnx (ort, ort-cuda)")
    if engines:
        backends.append("tensorrt (trt)")
    return {
        "path": str(manifest.path), "format_version": raw.get("format_version"), "created": raw.get("created"),
        "labels": manifest.labels, "model": manifest.model.to_dict(), "preprocessing": pre.to_dict(),
        "views": pre.views, "frames_per_video": pre.views * pre.frames,
        "class_matrix": raw.get("class_matrix") or {}, "scoring": raw.get("scoring") or {"protocol": "maka"}, "prompt_bank_sha256": raw.get("prompt_bank_sha256"),
        "backends": backends,
        "precisions": sorted(set(raw.get("precisions") or ["fp32"]) | {e["precision"] for e in engines.values()}),
        "engines": engines, "files": {name: info.get("bytes", 0) for name, info in manifest.files.items()},
        "missing_files": sorted(set(manifest.files) - set(present)),
        "vocabulary": VOCAB_FILE in manifest.files, "tools": raw.get("tools") or {},
        "checkpoint": raw.get("checkpoint") or {}, "verification": raw.get("verification"), "opset": raw.get("opset"),
        "vision_graph": manifest.vision_graph.to_dict(), "patching": raw.get("patching"),
    }


def _engine_summary(entry: dict[str, Any]) -> dict[str, Any]:
    key = entry.get("key") or {}
    gpu = key.get("gpu") or {}
    capability = gpu.get("capability") or []
    sm = "sm" + "".join(map(str, capability)) if capability else ""
    return {"graph": key.get("graph"), "precision": key.get("precision"), "tensorrt": key.get("tensorrt"),
            "gpu": f"{gpu.get('name', '?')} {sm}".strip(), "bytes": entry.get("bytes", 0),
            "file": entry.get("file"), "sha256": entry.get("sha256"), "built": entry.get("built")}


def _describe_graph(graph: dict[str, Any], patching: dict[str, Any] | None) -> str:
    text = ("per-frame [N, 3, R, R]" if graph["level"] == "frame" else
            f"clip-level [B, {graph['frames']}, 3, R, R] -> {graph['output']}, {graph['temporal_attention']}")
    if patching:
        text += f"; weights patched with {patching['base']} at ratio {patching['ratio']:g}"
    return text


def format_info(info: dict[str, Any], first: int = 5) -> str:
    labels, pre, model = info["labels"], info["preprocessing"], info["model"]
    shown = ", ".join(labels[:first]) + (", ..." if len(labels) > first else "")
    cm = info["class_matrix"]
    norm = pre.get("normalization", {})
    lines = [
        f"bundle {info['path']} (format {info['format_version']}, created {info['created']})",
        f"  labels          {len(labels)}: {shown}",
        f"  prompts         up to {cm.get('max_prompts', '?')} per class, {len(cm.get('fallback_labels') or [])} "
        f"template fallback(s); prompt bank {(info['prompt_bank_sha256'] or 'none')[:12]}",
        f"  model           ViT {model.get('vision_width')}w/{model.get('vision_layers')}L/p{model.get('vision_patch_size')}"
        f" @ {model.get('image_resolution')}px, embed {model.get('embed_dim')}",
        f"  preprocessing   profile {pre.get('profile', 'apclip')}, {pre.get('resolution')}px, normalisation "
        f"{norm.get('name', norm)}",
        f"  scoring         {info['scoring'].get('protocol')}, template {info['scoring'].get('template', '?')!r}",
        f"  vision graph    {_describe_graph(info['vision_graph'], info['patching'])}",
        f"  frames/views    T={pre.get('frames')} x {pre.get('clips')} clip(s) x {pre.get('crops')} crop(s) = "
        f"{info['views']} views, {info['frames_per_video']} frames per video",
        f"  backends        {', '.join(info['backends']) or 'none'}; precisions {', '.join(info['precisions'])}"
        f"; opset {info['opset']}",
        f"  engines         {len(info['engines']) if info['engines'] else 'none (TensorRT engines are built on the target GPU)'}",
        *[f"    {name}: {e['graph']} {e['precision']}, {e['gpu']}, TensorRT {e['tensorrt']}, {_mb(e['bytes'] or 0)}"
          for name, e in sorted(info["engines"].items())],
        f"  tokenizer       {'bundled BPE vocabulary (run-time labels need no open_clip)' if info['vocabulary'] else 'not bundled: run-time labels need open_clip_torch or --bpe-vocab'}",
        f"  checkpoint      {info['checkpoint'].get('name')} ({info['checkpoint'].get('format')}), "
        f"sha256 {str(info['checkpoint'].get('sha256'))[:12]}",
        "  files",
    ]
    total = 0
    for name, size in sorted(info["files"].items()):
        total += size
        flag = "  MISSING" if name in info["missing_files"] else ""
        lines.append(f"    {name:30s} {_mb(size):>12s}{flag}")
    lines.append(f"    {'total':30s} {_mb(total):>12s}")
    tools = ", ".join(f"{k} {v}" for k, v in sorted(info["tools"].items()))
    lines.append(f"  made with       {tools}")
    verification = info["verification"]
    if verification is None:
        lines.append("  verification    none at export (--no-verify)")
    else:
        lines.append(f"  verification at export: {'ok' if verification.get('ok') else 'FAILED'}")
        lines.append(f"    {'check':34s} {'metric':14s} {'value':>12s}  {'needs':>10s}  result")
        for c in verification.get("checks", []):
            lines.append(f"    {c['name']:34s} {c['metric']:14s} {c['value']:12.7g}  {c['threshold']:>10s}  "
                         f"{'ok' if c['ok'] else 'FAILED'}")
    return "\n".join(terminal_safe(line) for line in lines)  # labels may carry escape sequences


def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", action="store_true", help="print the information as one JSON object")


def _run_info(args: argparse.Namespace) -> int:
    info = bundle_info(args.bundle)
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else format_info(info))
    return EXIT_OK


# -- verify ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    item: str
    check: str
    ok: bool | None  # None: skipped (say why in detail)
    detail: str = ""


def verify_bundle(path: str) -> list[Finding]:
    """Hash every listed file, check the manifest's consistency, then load every file with the runtime."""
    from apclip.bundle import read_manifest, sha256_file

    manifest = read_manifest(path, verify=False)  # consistency (labels hash, class-matrix binding) raises here
    findings = [Finding("manifest.json", "consistent", True, "labels hash, preprocessing, class-matrix header")]
    intact = set()
    for name, info in sorted(manifest.files.items()):
        file = manifest.path / name
        if not file.is_file():
            findings.append(Finding(name, "sha256", False, "missing"))
        elif sha256_file(file) != info.get("sha256"):
            findings.append(Finding(name, "sha256", False, "does not match the manifest (modified or corrupt)"))
        else:
            findings.append(Finding(name, "sha256", True, _mb(file.stat().st_size)))
            intact.add(name)
    for name in sorted(intact):
        findings.append(_load(manifest, name))
    findings.extend(_engine_findings(manifest))
    return findings


def _engine_findings(manifest) -> list[Finding]:
    """TensorRT engines listed in the manifest: present and matching their sha256. Deserialising one
    needs its GPU and TensorRT version; the trt runner does that (and refuses a mismatch) at load."""
    from apclip.bundle import BundleError, bundle_member, sha256_file
    from apclip.engine.runners.engine_cache import listed_engines

    findings = []
    for name, entry in sorted(listed_engines(manifest).items()):
        try:  # a name from the manifest: never a file outside the bundle (no hash oracle)
            file = bundle_member(manifest.path, str(entry.get("file") or f"engines/{name}"))
        except BundleError as exc:
            findings.append(Finding(name, "sha256", False, str(exc)))
            continue
        if file.is_symlink() or not file.is_file():
            findings.append(Finding(name, "sha256", False, "listed in the manifest but missing"))
        elif sha256_file(file) != entry.get("sha256"):
            findings.append(Finding(name, "sha256", False, "does not match the manifest (modified or corrupt)"))
        else:
            findings.append(Finding(name, "sha256", True, f"{_mb(file.stat().st_size)} (deserialised by the trt "
                                                          f"runner on its GPU)"))
    return findings


def _load(manifest, name: str) -> Finding:
    """Open one intact file the way inference does."""
    file = manifest.path / name
    try:
        if name.endswith(".onnx"):
            try:
                import onnxruntime as ort
            except ImportError:
                return Finding(name, "loads", None, 'skipped: onnxruntime not installed (pip install "apclip[cpu]")')
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            expected = [i["name"] for spec in (manifest.raw.get("io") or {}).values() if spec.get("file") == name
                        for i in spec.get("inputs", [])]
            if expected and names != expected:
                return Finding(name, "loads", False, f"inputs {names}, manifest says {expected}")
            return Finding(name, "loads", True, f"ONNX Runtime, inputs {', '.join(names)}")
        if name == "classes.safetensors":
            from apclip.class_matrix import load_class_matrix

            matrix = load_class_matrix(file, manifest.labels)
            return Finding(name, "loads", True, f"[K={matrix.num_classes}, P={matrix.max_prompts}, "
                                                f"E={matrix.embeddings.shape[2]}]")
        if name == "prompts.json":
            from apclip.class_matrix import load_prompt_texts

            texts = load_prompt_texts(file, manifest.labels)
            return Finding(name, "loads", texts is not None,
                           f"{sum(map(len, texts))} prompts" if texts else "not a {label: [prompt, ...]} object")
        if name.endswith(".txt.gz"):
            from apclip.tokenizer import Tokenizer

            tokenizer = Tokenizer(file)
            return Finding(name, "loads", True, f"{len(tokenizer.encoder)} tokens")
    except (ApclipError, ValueError, OSError, RuntimeError) as exc:
        return Finding(name, "loads", False, " ".join(str(exc).split())[:200])
    except Exception as exc:  # ONNX Runtime raises its own exception types for bad graphs
        return Finding(name, "loads", False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    return Finding(name, "loads", None, "skipped: no loader for this file type")


def format_findings(findings: Sequence[Finding]) -> str:
    lines = [f"  {'file':30s} {'check':10s} result"]
    for f in findings:
        result = "ok" if f.ok else ("skipped" if f.ok is None else "FAILED")
        lines.append(f"  {f.item:30s} {f.check:10s} {result:8s} {f.detail}")
    return "\n".join(terminal_safe(line) for line in lines)  # labels may carry escape sequences


def _configure_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")


def _run_verify(args: argparse.Namespace) -> int:
    findings = verify_bundle(args.bundle)
    print(format_findings(findings))
    failed = [f for f in findings if f.ok is False]
    print(f"{args.bundle}: {'FAILED: ' + str(len(failed)) + ' problem(s)' if failed else 'ok'}")
    return EXIT_FAILURE if failed else EXIT_OK


register(Command("info", "labels, preprocessing, frames/views, backends, engines, sizes, versions", _configure_info,
                 _run_info))
register(Command("verify", "check every file's sha256 and load it; exit 1 on any problem", _configure_verify,
                 _run_verify))


PLUGIN_GROUP = "apclip.bundle_commands"


def load_plugin_commands() -> None:
    """Register the `Command`s other apclip packages declare under PLUGIN_GROUP (loaded on use only)."""
    from importlib import metadata

    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        if entry.name in COMMANDS:
            continue
        try:
            command = entry.load()
        except ImportError as exc:  # a partial install: the other commands still work
            print(f"{PROG}: note: subcommand {entry.name} is unavailable ({exc})", file=sys.stderr)
            continue
        register(command)


def build_parser() -> argparse.ArgumentParser:
    load_plugin_commands()
    p = argparse.ArgumentParser(prog=PROG, description="Inspect and check apclip bundles (no torch needed).",
                                epilog="Exit status: 0 ok, 1 failure, 2 usage or missing package, 130 interrupted.")
    add_version(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.configure(sub.add_parser(command.name, help=command.help, description=command.help))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except BrokenPipeError:
        return silence_broken_pipe()
    except (ApclipError, OSError) as exc:
        if args.debug:
            raise
        message = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename and not \
            isinstance(exc, ApclipError) else " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

