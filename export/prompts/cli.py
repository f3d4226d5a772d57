"""apclip-prompts: write AP-CLIP's prompt bank with an LLM (any OpenAI-compatible server).

    apclip-prompts generate --labels labels.txt --out bank.json [--strategy action-centric] [--dry-run]
    apclip-prompts derive --out graph.json [--labels labels.txt]
    apclip-prompts review bank.json --csv review.csv
    apclip-prompts apply-review bank.json review.csv [--out reviewed.json]

The API key is read from $OPENAI_API_KEY only. Errors are one line on stderr with a non-zero exit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from apclip.cli_common import EXIT_INTERRUPTED, UsageError, add_version, run_command
from apclip.errors import ApclipError
from apclip.prompt_bank import load_prompt_bank, save_prompt_bank, write_json_atomic
from apclip.tokenizer import CONTEXT_LENGTH

from apclip.export.prompts.client import LLMSettings, estimate_cost, price_per_mtok
from apclip.export.prompts.postprocess import MAX_DESCRIPTION_TOKENS
from apclip.export.prompts.strategies import STRATEGIES

PROG = "apclip-prompts"


def _add_llm_options(p: argparse.ArgumentParser) -> None:
    d = LLMSettings()
    g = p.add_argument_group("LLM server (API key from $OPENAI_API_KEY)")
    g.add_argument("--model", default=d.model, help="chat model name (default: %(default)s)")
    g.add_argument("--base-url", default=None,
                   help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 for vLLM or llama.cpp "
                        "(default: $OPENAI_BASE_URL or OpenAI)")
    g.add_argument("--timeout-s", type=float, default=d.timeout_s, help="per-request timeout (default: %(default)s)")
    g.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="retries per request on 429/5xx/timeouts (default: %(default)s)")
    g.add_argument("--backoff-s", type=float, default=d.backoff_s,
                   help="first retry delay, doubled per retry with jitter; Retry-After wins (default: %(default)s)")
    g.add_argument("--repair-attempts", type=int, default=d.repair_attempts,
                   help="follow-up requests after an invalid answer (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the server's)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed, for servers that honour it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Generate AP-CLIP's action-conditioned prompt bank "
                                                            "with an LLM.")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a prompt bank for a labels file")
    gen.add_argument("--labels", required=True, type=Path, help="text file, one class label per line")
    gen.add_argument("--out", required=True, type=Path, help="prompt bank JSON to write")
    gen.add_argument("--strategy", choices=STRATEGIES, default="action-centric",
                     help="action-centric (AP-CLIP, default); direct, cupl, set, single for ablations")
    gen.add_argument("--graph", type=Path, default=None,
                     help="reviewed attribute graph JSON (default: the shipped Scene/Actor/Body graph)")
    gen.add_argument("--llm-prompts", type=int, default=3, help="distinct question templates per label "
                                                                "(default: %(default)s)")
    gen.add_argument("--descriptions-per-prompt", type=int, default=12,
                     help="descriptions per answer for direct and cupl (default: %(default)s)")
    gen.add_argument("--max-description-tokens", type=int, default=MAX_DESCRIPTION_TOKENS,
                     help="CLIP tokens per description, SOT/EOT included (default: %(default)s)")
    gen.add_argument("--bpe-vocab", type=Path, default=None,
                     help="CLIP's bpe_simple_vocab_16e6.txt.gz for the token limits (default: $APCLIP_BPE_VOCAB, "
                          "else the installed open_clip_torch's)")
    gen.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    gen.add_argument("--journal", type=Path, default=None,
                     help="answer journal for resuming (default: OUT.journal.jsonl)")
    gen.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=False,
                     help="print the requests as JSON lines and estimate tokens and cost; send nothing")
    gen.add_argument("--price-in", type=float, default=None, help="USD per 1M input tokens, for the estimate")
    gen.add_argument("--price-out", type=float, default=None, help="USD per 1M output tokens, for the estimate")
    gen.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: when stderr is a terminal)")
    _add_llm_options(gen)

    der = sub.add_parser("derive", help="ask the LLM for a candidate attribute graph, to review by hand")
    der.add_argument("--out", required=True, type=Path, help="candidate graph JSON to write")
    der.add_argument("--labels", type=Path, default=None, help="labels file, to show the LLM example actions")
    der.add_argument("--graph", type=Path, default=None, help="graph whose aspects to keep (default: shipped)")
    der.add_argument("--attributes-per-aspect", type=int, default=4, help="(default: %(default)s)")
    der.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                     help="overwrite an existing --out")
    _add_llm_options(der)

    rev = sub.add_parser("review", help="export a CSV table for the manual double-check")
    rev.add_argument("bank", type=Path)
    rev.add_argument("--csv", required=True, type=Path, help="table to write; mark rows 'reject' in 'decision'")

    app = sub.add_parser("apply-review", help="drop the prompts a review table marks 'reject'")
    app.add_argument("bank", type=Path)
    app.add_argument("csv", type=Path)
    app.add_argument("--out", type=Path, default=None, help="reviewed bank to write (default: replace BANK)")
    return parser


def _llm_settings(args: argparse.Namespace) -> LLMSettings:
    for name in ("timeout_s", "backoff_s"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    if args.max_retries < 0 or args.repair_attempts < 0:
        raise UsageError("--max-retries and --repair-attempts must not be negative")
    return LLMSettings(model=args.model, base_url=args.base_url, timeout_s=args.timeout_s,
                       max_retries=args.max_retries, backoff_s=args.backoff_s,
                       repair_attempts=args.repair_attempts, temperature=args.temperature, seed=args.seed)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cost_line(model: str, tokens_in: int, tokens_out: int, args: argparse.Namespace) -> str:
    prices = price_per_mtok(model, args.price_in, args.price_out)
    cost = estimate_cost(tokens_in, tokens_out, prices)
    if cost is None:
        return f"cost: unknown for model {model!r} (pass --price-in and --price-out, USD per 1M tokens)"
    assert prices is not None
    return f"estimated cost: ${cost:.4f} (at ${prices[0]:g} in / ${prices[1]:g} out per 1M tokens)"


def cmd_generate(args: argparse.Namespace) -> int:
    from apclip.labels import read_labels

    from apclip.export.prompts.generate import dry_run, generate_bank
    from apclip.export.prompts.graph import load_graph
    from apclip.export.prompts.strategies import make_strategy

    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    if not 4 <= args.max_description_tokens <= CONTEXT_LENGTH:
        # 4 = SOT, one word, the final period, EOT.
        raise UsageError(f"--max-description-tokens must be between 4 and {CONTEXT_LENGTH}, "
                          f"got {args.max_description_tokens}")
    if args.bpe_vocab:
        from apclip.tokenizer import use_vocab

        use_vocab(args.bpe_vocab)
    labels = read_labels(args.labels)
    graph = load_graph(args.graph) if args.strategy == "action-centric" else None
    strategy = make_strategy(args.strategy, args.llm_prompts, graph, args.descriptions_per_prompt)
    llm = _llm_settings(args)
    journal = args.journal or args.out.with_name(args.out.name + ".journal.jsonl")

    if args.dry_run:
        if not strategy.uses_llm:
            _say(f"dry run: the {strategy.name} strategy sends no requests ({len(labels)} labels)")
            return 0
        count = total_in = total_out = 0
        for request, tokens_in, tokens_out in dry_run(strategy, labels, llm, journal, args.max_description_tokens):
            print(json.dumps(request, ensure_ascii=False))
            count, total_in, total_out = count + 1, total_in + tokens_in, total_out + tokens_out
        _say(f"dry run: {count} requests for {len(labels)} labels x {strategy.llm_prompts} LLM-prompts "
             f"(answers already in {journal} are skipped); about {total_in:,} input and {total_out:,} output "
             f"tokens; {_cost_line(llm.model, total_in, total_out, args)}")
        return 0

    client = None
    if strategy.uses_llm:
        from apclip.export.prompts.client import ChatClient

        client = ChatClient.from_env(llm)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar: Any = None

    def on_start(from_journal: int, to_fetch: int) -> None:
        nonlocal bar
        if from_journal:
            _say(f"resuming: {from_journal} answers from {journal}, {to_fetch} to request")
        if show and to_fetch:
            from tqdm import tqdm

            bar = tqdm(total=to_fetch, desc="requests", unit="req", file=sys.stderr)

    try:
        report = generate_bank(strategy, labels, client, journal, args.max_description_tokens, args.concurrency,
                               progress=lambda n: bar.update(n) if bar is not None else None, on_start=on_start)
    finally:
        if bar is not None:
            bar.close()
    save_prompt_bank(report.bank, args.out)
    prompts = sum(len(c.entries) for c in report.bank.classes)
    _say(f"wrote {args.out}: {prompts} prompts for {len(labels)} labels ({strategy.name}), "
         f"sha256 {report.bank.sha256}")
    if report.truncated:
        _say(f"{report.truncated} descriptions were shortened to {args.max_description_tokens} tokens")
    if report.usage is not None:
        u = report.usage
        mode = "structured output" if report.structured_output else "JSON instructions (server refused json_schema)"
        _say(f"{report.fetched} answers requested, {report.from_journal} from the journal; {u.requests} HTTP "
             f"requests ({u.retries} retries, {u.repairs} repairs), {mode}; tokens: {u.prompt_tokens:,} in, "
             f"{u.completion_tokens:,} out; {_cost_line(llm.model, u.prompt_tokens, u.completion_tokens, args)}")
    return 0


def cmd_derive(args: argparse.Namespace) -> int:
    from apclip.export.prompts.client import ChatClient
    from apclip.labels import read_labels
    from apclip.export.prompts.graph import derive_graph, load_graph

    if args.out.exists() and not args.force:
        raise ApclipError(f"{args.out} exists; pass --force to overwrite it (a reviewed graph would be lost)")
    labels = read_labels(args.labels) if args.labels else []
    base = load_graph(args.graph)
    client = ChatClient.from_env(_llm_settings(args))
    graph = derive_graph(client, args.attributes_per_aspect, labels, base)
    document = graph.to_dict()
    document["derived_by"] = {"model": args.model, "example_labels": len(labels)}
    write_json_atomic(args.out, document)
    _say(f"wrote candidate graph {args.out} ({graph.attribute_count} attributes): check and edit it, set "
         f"\"reviewed\": true, then pass --graph {args.out} to `{PROG} generate`")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from apclip.export.prompts.review import write_review_csv

    rows = write_review_csv(load_prompt_bank(args.bank), args.csv)
    _say(f"wrote {args.csv}: {rows} prompts; change 'keep' to 'reject' in the decision column, then run "
         f"`{PROG} apply-review {args.bank} {args.csv}`")
    return 0


def cmd_apply_review(args: argparse.Namespace) -> int:
    from apclip.export.prompts.review import apply_review

    bank = load_prompt_bank(args.bank)
    reviewed, dropped = apply_review(bank, args.csv)
    out = args.out or args.bank
    save_prompt_bank(reviewed, out)
    _say(f"wrote {out}: dropped {dropped} rejected prompts, sha256 {reviewed.sha256}")
    return 0


def check_output_paths(args: argparse.Namespace) -> None:
    """No subcommand's output may be one of its inputs (apclip.output_guard). apply-review without --out
    replaces BANK on purpose (atomically); an --out equal to the review table is refused."""
    from apclip.output_guard import Input, Output, check_outputs

    command = args.command
    if command == "generate":
        journal = args.journal or args.out.with_name(args.out.name + ".journal.jsonl")
        outputs = [Output("--out", args.out), Output("--journal", journal)]
        inputs = [Input("--labels", args.labels), Input("--graph", args.graph), Input("--bpe-vocab", args.bpe_vocab)]
    elif command == "derive":
        outputs = [Output("--out", args.out)]
        inputs = [Input("--labels", args.labels), Input("--graph", args.graph)]
    elif command == "review":
        outputs, inputs = [Output("--csv", args.csv)], [Input("BANK", args.bank)]
    else:
        outputs, inputs = [Output("--out", args.out)], [Input("CSV", args.csv)]
    check_outputs(outputs, inputs)


COMMANDS = {"generate": cmd_generate, "derive": cmd_derive, "review": cmd_review, "apply-review": cmd_apply_review}


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, build_parser(), run, argv)


def run(args: argparse.Namespace) -> int:
    check_output_paths(args)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted; answers received so far are in the journal: rerun the same command to resume")
        sys.stdout.flush()
        # Requests still in flight would only be discarded: exit without waiting for their threads.
        os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
