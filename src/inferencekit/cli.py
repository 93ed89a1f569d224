"""The `inferencekit` command line (DESIGN.md fixes its verbs and flags).

User mistakes print one line naming what was wrong and what is accepted, and exit 2.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import os
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, NoReturn

import yaml

from inferencekit.errors import UserError, first_line
from inferencekit.interrupt import Interrupted, handle_signals
from inferencekit.redact import redact

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return key.strip(), raw
    # Only numbers, booleans and null change type; "a: b" stays text unless written as a mapping.
    if isinstance(value, (dict, list)) and not raw.lstrip().startswith(("{", "[")):
        return key.strip(), raw
    return key.strip(), value


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("inferencekit")
    except metadata.PackageNotFoundError:  # run from a source checkout without installing
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="inferencekit", description="Evaluate LLMs on reasoning benchmarks with test-time search.")
    parser.add_argument("--version", action="version", version=f"inferencekit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="generate, grade and score a benchmark (resumes by default)")
    g = run.add_argument_group("model")
    g.add_argument("--model", help="preset name, local folder, .gguf file or hub id (default: smollm2-135m)")
    g.add_argument("--backend", help="hf | llamacpp | openai | vllm (default: inferred)")
    g.add_argument("--model-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="backend setting, e.g. n_ctx=4096 or base_url=http://127.0.0.1:8000/v1")
    g.add_argument("--dtype", help="hf: auto | float32 | bfloat16 | float16")
    g.add_argument("--device-map", help="hf: e.g. auto to shard over all GPUs")
    g.add_argument("--attn-implementation", help="hf: eager | sdpa | flash_attention_2")
    g.add_argument("--trust-remote-code", action="store_true", default=None, help="allow a checkpoint's own code")
    g = run.add_argument_group("data")
    g.add_argument("--dataset", help="gsm8k | math500 | aime24 | amc23 | gsm8k-mini | a table file")
    g.add_argument("--data-dir", help="folder with <dataset>/test.jsonl (or set INFERENCEKIT_DATA_DIR)")
    g.add_argument("--split", help="split to load (default test)")
    g.add_argument("--input-field", help="field holding the problem, for a local file")
    g.add_argument("--reference-field", help="field holding the gold answer, for a local file")
    g.add_argument("--num-shots", type=int, help="worked examples in the prompt (gsm8k: from the train split)")
    g.add_argument("--system-prompt", help="system message for the chat template")
    g.add_argument("--limit", type=int, help="only the first K problems")
    g = run.add_argument_group("search")
    g.add_argument("--method", help="cot | best_of_n | ... (see `inferencekit list methods`)")
    g.add_argument("--n", type=int, help="samples (or search width) per problem")
    g.add_argument("--beam-width", type=int, metavar="M",
                   help="tree search branching factor M (default 4): children of each expanded node. beam_search: "
                   "each of the N/M kept beams grows M next steps; dvts: each of N/M subtrees grows its best node M "
                   "ways; mcts: a selected leaf grows M next steps; token_beam: each of the N/M beams tries its M "
                   "likeliest next tokens. Other methods ignore it")
    g.add_argument("--reward-model", help="reward model preset, path or format")
    g.add_argument("--reward-model-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="reward model setting, e.g. format=token_classification or max_tokens_per_batch=4096")
    g.add_argument("--aggregation", help="min | last | prod | mean | model")
    g.add_argument("--vote", help="comma-separated votes, e.g. majority,weighted,best")
    g.add_argument("--box-match", help="last (default): grade the last \\boxed{}; first: the first; any: any box")
    g.add_argument("--grader", help="inferencekit (default) | math-verify: plain math-verify, as lighteval grades")
    g.add_argument("--max-steps", type=int, help="tree search: most steps in a path (default 40)")
    g.add_argument("--lookahead", type=int, help="beam_search/dvts: greedy steps ahead used for ranking")
    g.add_argument("--filter-duplicates", action="store_true", default=None, help="beam search: drop repeated paths")
    from inferencekit.search.base import METHODS  # importing the search package registers every method
    from inferencekit.search.options import add_method_flags

    add_method_flags(run, dict(METHODS.items()))  # each method's own options (search/options.py)
    g = run.add_argument_group("generation")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--seed", type=int)
    g = run.add_argument_group("run")
    g.add_argument("--work-dir", help="where run folders go (default results)")
    g.add_argument("--exp-name", help="name of this experiment (default default)")
    g.add_argument("--batch-size", type=int, help="problems per generator call (default 8)")
    g.add_argument("--concurrency", type=int, help="problems in flight at once (default 2 x batch size)")
    g.add_argument("--config", help="YAML file of run settings (command-line flags win)")
    g.add_argument("--no-resume", action="store_true", help="start over; earlier results are moved aside")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    # scale-out: shards of one experiment, Ray actors (README "Scale out")
    g = run.add_argument_group("scale-out")
    g.add_argument("--shard", help="I/K: run the I-th of K disjoint slices into <run>/shard-I-of-K/ (merge after)")
    g.add_argument("--executor", help="local (default) | ray: in-process engines as Ray actors")
    g.add_argument("--replicas", type=int, help="--executor ray: number of actors (default 1)")
    g.add_argument("--ray-address", help="--executor ray: cluster address (default $RAY_ADDRESS, else a local one)")
    g.add_argument("--ray-num-gpus", type=float, help="--executor ray: GPUs per actor (default 0)")

    ev = sub.add_parser("evaluate", help="re-grade and re-vote a finished run, without generating; written to "
                        "RUN_DIR/evaluations/NAME unless --in-place")
    ev.add_argument("run_dir")
    ev.add_argument("--vote", help="comma-separated votes (default: the run's)")
    ev.add_argument("--aggregation", help="min | last | prod | mean | model (default: the run's)")
    ev.add_argument("--box-match", help="last | first | any (default: the run's)")
    ev.add_argument("--grader", help="inferencekit | math-verify (default: the run's); also lists where the two differ")
    ev.add_argument("--name", help="name of the evaluation folder (default: from the changed settings)")
    ev.add_argument("--in-place", action="store_true",
                    help="re-grade the run itself: its predictions, config.yaml and metrics.json change together")

    cmp = sub.add_parser("compare", help="compare two runs sample by sample (2x2 table, exact McNemar test)")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    cmp.add_argument("--vote", help="vote to compare (default: the first vote both runs have)")
    cmp.add_argument("--format", choices=["md", "json"], default="md", help="output format (default md)")
    cmp.add_argument("--show", type=int, default=5, help="samples listed per disagreement cell (default 5)")

    sw = sub.add_parser("sweep", help="run every cell, budget and seed of a spec through one engine; write the "
                        "compute frontier (README: What test-time compute buys)")
    sw.add_argument("spec", metavar="SPEC.yaml")
    sw.add_argument("--work-dir", default="results", help="the sweep's folder is WORK_DIR/<name> (default results)")
    sw.add_argument("--shard", help="I/K: only the I-th of K slices of the sweep's runs (report once all K ended)")
    sw.add_argument("--executor", help="local (default) | ray: in-process engines as Ray actors")
    sw.add_argument("--replicas", type=int, help="--executor ray: number of actors (default 1)")
    sw.add_argument("--parallel-runs", type=int, default=4, metavar="R",
                    help="runs in flight at once, each with its own --concurrency problems (default 4)")
    sw.add_argument("--no-progress", action="store_true", help="no line per finished run")

    rep = sub.add_parser("report", help="metrics table, accuracy plots and an HTML page across runs; for a sweep "
                         "folder, its frontier files")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", help="folder for index.html, metrics.csv and plots (default report; a sweep: its "
                     "own folder)")
    rep.add_argument("--max-samples", type=int, default=200, help="samples listed per run in the page (default 200)")

    chat = sub.add_parser("chat", help="multi-turn chat with a model, replies scored by a reward model")
    chat.add_argument("--model", help="preset name, local folder, .gguf file or hub id (default: smollm2-135m)")
    chat.add_argument("--backend", help="hf | llamacpp | openai | vllm (default: inferred)")
    chat.add_argument("--model-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    chat.add_argument("--reward-model", help="reward model preset, path or format (e.g. llm_judge)")
    chat.add_argument("--aggregation", default="last", choices=["min", "last", "prod", "mean", "model"],
                      help="how step scores make one reward (default last)")
    chat.add_argument("--max-new-tokens", type=int)
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--top-p", type=float)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--system", help="system prompt")

    mrg = sub.add_parser("merge", help="merge the shards (--shard I/K) of an experiment into its run folder")
    mrg.add_argument("run_dir", help="the experiment folder holding shard-I-of-K/ folders")

    ls = sub.add_parser("list", help="show what is registered")
    ls.add_argument("what", choices=["models", "datasets", "methods", "reward-models", "votes"])
    return parser


_NOT_SETTINGS = {"command", "config", "no_resume", "no_progress"}  # how to run, not what


def cmd_run(args: argparse.Namespace) -> int:
    from inferencekit.config import resolve_flags
    from inferencekit.models import model_defaults
    from inferencekit.results.summary import print_summary
    from inferencekit.runner import run

    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    # repeated KEY=VALUE flags and --vote carry RunConfig keys under other names
    flags["model_args"] = dict(flags.pop("model_arg"))
    flags["reward_model_args"] = dict(flags.pop("reward_model_arg")) or None
    flags["votes"] = flags.pop("vote")
    config = resolve_flags(flags, config_file=args.config, preset_defaults=model_defaults)
    result = run(config, resume=not args.no_resume, show_progress=not args.no_progress)
    print_summary(result.metrics, result.run_dir)
    if result.metrics.get("failed"):
        sys.stderr.write(f"inferencekit: {result.metrics['failed']} problem(s) failed (generation errors, see "
                         f"{result.run_dir}/run.log) and count in no accuracy; rerun the same command to retry them\n")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from inferencekit.results.reevaluate import reevaluate
    from inferencekit.results.summary import print_summary

    # Options beyond these (e.g. a grader choice) pass through as run settings.
    known = {"command", "run_dir", "vote", "aggregation", "box_match", "name", "in_place"}
    settings = {k: v for k, v in vars(args).items() if k not in known and v is not None}
    result = reevaluate(args.run_dir, votes=args.vote, aggregation=args.aggregation, box_match=args.box_match,
                        name=args.name, in_place=args.in_place, **settings)
    print_summary(result.metrics, result.path)
    print(f"{'re-graded in place' if result.name is None else 'evaluation written to'}: {result.path}")
    if args.grader is not None:
        from inferencekit.results.disagreements import report_disagreements

        print(report_disagreements(args.run_dir, box_match=args.box_match))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from inferencekit.results.compare import compare_runs, format_json, format_markdown

    result = compare_runs(args.run_a, args.run_b, vote=args.vote, show=args.show)
    sys.stdout.write(format_json(result) if args.format == "json" else format_markdown(result))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from inferencekit.sweep import sweep

    result = sweep(args.spec, work_dir=args.work_dir, shard=args.shard, executor=args.executor,
                   replicas=args.replicas, show_progress=not args.no_progress, parallel_runs=args.parallel_runs)
    problems = sum(r.problems_generated for r in result.runs)
    print(f"sweep {result.folder}: {len(result.runs)} run(s), {problems} problem(s) generated, "
          f"{result.loads} model load(s), {result.seconds:.1f} s")
    if result.report:
        print(result.report["frontier.md"].read_text(encoding="utf-8"))
        print("frontier written: " + ", ".join(str(p) for p in result.report.values()))
    else:
        print(f"shard {args.shard} done; once every shard has finished: inferencekit report {result.folder}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from inferencekit.results.report import build_report
    from inferencekit.sweep import is_sweep

    if len(args.run_dirs) == 1 and is_sweep(args.run_dirs[0]):
        from inferencekit.results.frontier import write_frontier

        files = write_frontier(args.run_dirs[0], args.out)
        print(files["frontier.md"].read_text(encoding="utf-8"))
        print("frontier written: " + ", ".join(str(p) for p in files.values()))
        return 0
    files = build_report(args.run_dirs, args.out or "report", max_samples=args.max_samples)
    print(f"report written: {files['index.html']}")
    for name, path in files.items():
        if name != "index.html":
            print(f"  {path}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from inferencekit.chat import open_session, run_chat

    session = open_session(
        args.model, backend=args.backend, model_args=dict(args.model_arg), reward_model=args.reward_model,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        system=args.system, aggregation=args.aggregation,
    )
    try:
        return run_chat(session)
    finally:
        session.generator.close()


def cmd_merge(args: argparse.Namespace) -> int:
    from inferencekit.results.shards import merge
    from inferencekit.results.summary import print_summary

    print_summary(merge(args.run_dir), args.run_dir)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from inferencekit.presets import load_preset, preset_names

    if args.what == "models":
        for name in preset_names("models"):
            p = load_preset("models", name) or {}
            print(f"{name:32} {p.get('backend', ''):9} {p.get('description', p.get('path', ''))}")
    elif args.what == "datasets":
        from inferencekit.datasets import dataset_names

        for name in dataset_names():
            print(f"{name:16} {(load_preset('datasets', name) or {}).get('description', '')}")
    elif args.what == "methods":
        from inferencekit.search import get_method, method_names
        from inferencekit.search.options import option_lines

        for name in method_names():
            method = get_method(name)
            print(f"{name:16} {first_line(method.__doc__ or '')}")
            for line in option_lines(method):
                print(f"{'':18}{line}")
    elif args.what == "votes":
        from inferencekit.voting import needs_scores, vote_names

        for name in vote_names():
            print(f"{name:12} {'needs a reward model' if needs_scores(name) else ''}".rstrip())
    else:
        from inferencekit.reward_models import list_reward_models

        for line in list_reward_models():
            print(line)
    return 0


COMMANDS = {
    "run": cmd_run, "evaluate": cmd_evaluate, "compare": cmd_compare, "report": cmd_report, "chat": cmd_chat,
    "list": cmd_list, "merge": cmd_merge, "sweep": cmd_sweep,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _report_native_crashes()
    # Ctrl-C and SIGTERM stop a command cleanly, a second one at once (interrupt.py); chat keeps Ctrl-C for itself
    with nullcontext() if args.command == "chat" else handle_signals():
        try:
            return COMMANDS[args.command](args)
        except UserError as exc:
            sys.stderr.write(f"inferencekit: error: {redact(str(exc))}\n")
            return EXIT_USAGE
        except KeyboardInterrupt as exc:
            stopped = exc if isinstance(exc, Interrupted) else Interrupted()
            sys.stderr.write(f"inferencekit: {stopped.message()}\n")
            _leave_if_stuck(stopped.exit_code)
            return stopped.exit_code
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except OSError as exc:  # full disk, read-only folder, ...: the system's word, in one line
            where = f": {exc.filename}" if exc.filename else ""
            sys.stderr.write(f"inferencekit: error: {redact(exc.strerror or first_line(exc))}{where}\n")
            return 1


def _report_native_crashes() -> None:
    """A crash inside a native library (llama.cpp, torch) prints every thread's Python stack, not only the C
    library's one line (`double free or corruption`), so the report says which request was in flight."""
    if not faulthandler.is_enabled():
        try:
            faulthandler.enable()
        except (AttributeError, ValueError, io.UnsupportedOperation):  # stderr without a file descriptor
            pass


def _leave_if_stuck(code: int, grace_s: float = 3.0) -> None:
    """Exit now when a worker thread still runs after `grace_s` (an engine that did not notice the cancel):
    the interpreter would wait for it at exit. Everything finished was saved before."""
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon and t is not threading.current_thread() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
