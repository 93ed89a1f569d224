"""Run a benchmark: load, keep K problems in flight, grade, append each finished sample, resume, summarise."""

from __future__ import annotations

import contextvars
import itertools
import logging
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from inferencekit import interrupt
from inferencekit.config import RunConfig, config_from_dict
from inferencekit.datasets import Dataset, Sample, dataset_label, load_dataset
from inferencekit.errors import UserError, one_line
from inferencekit.grading import Grader
from inferencekit.models import resolve_model
from inferencekit.models.base import Cancelled, GenerationError, PromptTooLong, UsageAccount
from inferencekit.prompts import build_messages
from inferencekit.redact import RedactingFormatter
from inferencekit.results.accounting import attach_costs, parameter_counts
from inferencekit.results.evaluate import apply_votes, check_votes, compute_metrics, grade_records
from inferencekit.results.lock import run_folder_lock
from inferencekit.results.provenance import begin_provenance
from inferencekit.results.records import CandidateRecord, Record
from inferencekit.results.shards import select_shard, shard_dir
from inferencekit.results.store import LOG, RunStore, run_dir_for
from inferencekit.search import Candidate, Problem, get_method
from inferencekit.session import Session, SharedClock

log = logging.getLogger("inferencekit")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    problems_generated: int  # problems searched by this invocation (the rest were resumed)


def problem_seed(seed: int, index: int) -> int:
    """Each problem's sampling seed depends on the run seed and its index only, so resumes repeat it."""
    return (seed * 1_000_003 + index) % (2**31)


def check_run(config: RunConfig) -> None:
    """Refuse, before anything loads, a method, vote or reward model setting that cannot run."""
    method_cls = get_method(config.method)
    method_cls.check(config)
    check_votes(config.votes, has_scores=config.reward_model is not None or method_cls.provides_scores)
    if method_cls.needs_reward_model and config.reward_model is None:
        raise UserError(f"method {config.method} needs --reward-model")
    _check_reward_model(config)


def run(config: RunConfig, resume: bool = True, show_progress: bool = True, session: Session | None = None
        ) -> RunResult:
    """Run `config` to completion in its run folder, resuming what an earlier invocation finished.

    With a `session` (several runs at once, `inferencekit sweep`), its engines, grader and clock are used and
    left open; without one, the run loads its own and closes them at the end.
    """
    if session is None:
        with Session() as own:
            return run(config, resume, show_progress, own)
    method_cls = get_method(config.method)
    check_run(config)
    dataset = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        split=config.split,
        input_field=config.input_field,
        reference_field=config.reference_field,
        num_shots=config.num_shots,
        limit=config.limit,
    )
    dataset = select_shard(dataset, config.shard)  # scale-out: only this shard's problems (all when unsharded)
    store, spec = _store_for(config)
    with run_folder_lock(store.path, "run"):  # one writer per run folder (results/lock.py)
        return _run_locked(store, config, spec, dataset, method_cls, resume, show_progress, session)


def _run_locked(store: RunStore, config: RunConfig, spec: Any, dataset: Dataset, method_cls: Any, resume: bool,
                show_progress: bool, session: Session) -> RunResult:
    provenance = begin_provenance(store.path, config, spec, dataset, resume)  # refuses a changed model/data hash
    _prepare_store(store, config, resume)
    provenance.write()

    with _run_log(store.path / LOG):
        log.info("run %s: %d samples, method %s, model %s", store.path, len(dataset.samples), config.method, spec.path)
        done = {r.index for r in store.records() if not r.failed}  # a failed problem is redone
        todo = [s for s in dataset.samples if s.index not in done]
        if done:
            finished = len(dataset.samples) - len(todo)
            log.info("resuming: %d of %d samples already finished", finished, len(dataset.samples))
        if todo:
            generator = session.generator(spec, config)
            reward_model, shared = session.reward_model(config, generator)
            provenance.loaded(spec, generator, reward_model)
            method = method_cls(config, generator, shared)
            method.answer_style = dataset.style  # group answers as grading reads them
            _generate(method, generator, reward_model, dataset, todo, store, config, show_progress, session)
        records = _finish_records(store, dataset, config)
        metrics = compute_metrics(records, config.votes, config.aggregation, seed=config.seed)
        if failed := metrics["failed"]:
            log.warning("%d problem(s) failed (generation errors); rerun the same command to retry them", failed)
        store.write_metrics(metrics)
        provenance.finish(metrics, problems_generated=len(todo))
        log.info("metrics: %s", {v: m["accuracy"] for v, m in metrics["votes"].items()})
    return RunResult(run_dir=store.path, metrics=metrics, problems_generated=len(todo))


def _store_for(config: RunConfig) -> tuple[RunStore, Any]:
    """The run folder of `config` and its resolved model spec (`config.backend` set from it)."""
    spec = resolve_model(config.model, config.backend, config.model_args)
    config.backend = spec.backend
    rm_label = _check_reward_model(config)
    run_dir = run_dir_for(config.work_dir, dataset_label(config.dataset), spec.name, rm_label, config.exp_name)
    return RunStore(shard_dir(run_dir, config.shard)), spec  # scale-out: <run>/shard-I-of-K/ for a shard


def check_resumable(config: RunConfig) -> None:
    """Refuse now what resuming `config` would refuse once it starts: a run folder holding other settings
    (a sweep checks all its runs this way before anything loads)."""
    store, _ = _store_for(config)
    _refuse_changed(store, config)


def _check_reward_model(config: RunConfig) -> str | None:
    """Resolve the reward model and check its options before any model loads; return its label."""
    if config.reward_model is None:
        return None
    from inferencekit.reward_models import resolve_reward_model
    from inferencekit.reward_models.registry import format_class

    spec = resolve_reward_model(config.reward_model, config.reward_model_args.get("format"))
    format_class(spec.format).split_arguments(config.reward_model_args)  # UserError naming the accepted keys
    return spec.name


def _prepare_store(store: RunStore, config: RunConfig, resume: bool) -> None:
    """Refuse to resume a run whose results-defining settings changed; --no-resume sets old results aside."""
    if resume:
        _refuse_changed(store, config)
    elif store.exists():
        backup = store.set_aside()
        if backup:
            log.info("--no-resume: earlier results moved to %s", backup)
    store.write_config(config.to_yaml())
    store.repair()


def _refuse_changed(store: RunStore, config: RunConfig) -> None:
    """Refuse a run folder whose results-defining settings differ from `config`'s, naming them."""
    if not store.exists():
        return
    try:
        old = config_from_dict(store.read_config())
    except UserError:  # an unreadable old config cannot be trusted to match
        raise UserError(f"{store.path}/config.yaml cannot be read; rerun with --no-resume") from None
    new = config.result_keys()
    changed = sorted(k for k, v in old.result_keys().items() if new.get(k) != v)
    if changed:
        details = ", ".join(f"{k}: {old.result_keys()[k]!r} -> {new[k]!r}" for k in changed)
        raise UserError(
            f"{store.path} holds a run with other settings ({details}); "
            "use --no-resume to start over or --exp-name to keep both"
        )


_POLL_S = 0.2  # how often the run looks at a stop request while problems run
_CANCEL_GRACE_S = 5.0  # how long cancelled problems get to end before the run stops without them


def _generate(method, generator, reward_model, dataset: Dataset, todo: list[Sample], store, config, show_progress,
              session: Session):
    """Search up to K problems at once, each on its own; grade and append each as soon as it finishes.

    Each problem's search runs in a worker thread with models bound to its own usage account and affinity
    (see `_solve`), so the engines batch the requests of all problems in flight. Problems are taken from
    `todo` only as slots free up (memory stays flat on a huge dataset), and this thread is the only
    writer of the run folder. A stop request (Ctrl-C, SIGTERM: see `inferencekit.interrupt`) saves what
    finished, cancels the rest and raises `Interrupted`.
    """
    from inferencekit.progress import RunProgress

    total = len(dataset.samples)
    workers = config.concurrency or 2 * config.batch_size
    with interrupt.stop_request() as stop, session.grader(config) as grader, RunProgress(
        total=total, done=total - len(todo), vote=config.votes[0], enabled=show_progress
    ) as progress:
        problems = _Problems(method, generator, reward_model, dataset, todo, store, config, grader, progress, workers,
                             session.clock)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="problem")
        hook = interrupt.signal_hook()
        clean, finished = False, []
        try:
            problems.fill(pool)
            while problems.running and not stop:
                finished, _ = wait(problems.running, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                for future in problems.in_order(finished):
                    if stop:  # the way out saves the rest
                        break
                    problems.save(future)
                    if hook is not None and problems.saved == hook.after:
                        hook.fire(problems.running)
                if not stop:
                    problems.fill(pool)
            clean = not stop
        except KeyboardInterrupt as exc:  # a library caller's Ctrl-C (the CLI's handler sets `stop` instead)
            stop.signum = getattr(exc, "signum", signal.SIGINT)
        finally:
            if not clean:  # stopping, or an error: the problems in flight are abandoned, not awaited
                finished = [f for f in problems.running if f.done()]  # before the cancel takes effect
                generator.cancel()
            pool.shutdown(wait=clean, cancel_futures=True)
        if stop:
            problems.stop(stop.signum, finished, hook)


class _Problems:
    """The problems in flight of one invocation: admitted as slots free up, saved as each finishes."""

    def __init__(self, method, generator, reward_model, dataset: Dataset, todo: list[Sample], store: RunStore,
                 config: RunConfig, grader: Grader, progress, workers: int, clock: SharedClock) -> None:
        self.method, self.generator, self.dataset, self.store, self.config = method, generator, dataset, store, config
        self.grader, self.progress, self.workers = grader, progress, workers
        self.samples = iter(todo)
        self.todo = len(todo)
        self.clock = clock
        self.costs = parameter_counts(generator, reward_model)
        self.running: dict[Future, tuple[Sample, Problem]] = {}
        self.saved = self.succeeded = 0
        # A prompt too long for the context fails its problem; while no problem has fit yet such failures are
        # held back: when none of the first wave fits, the context is the user's mistake about the whole run.
        self.fitted = len(todo) < len(dataset.samples)  # an earlier invocation finished some
        self.held: list[Record] = []

    def fill(self, pool: ThreadPoolExecutor) -> None:
        for sample in itertools.islice(self.samples, self.workers - len(self.running)):
            problem = Problem(
                index=sample.index,
                question=sample.input,
                prompt=self.generator.chat_prompt(
                    build_messages(sample, self.dataset, self.config.system_prompt, self.config.prompt_template)
                ),
                seed=problem_seed(self.config.seed, sample.index),
            )
            # in this thread's context: the problem's log lines go to this run's log (_CURRENT_RUN)
            future = pool.submit(contextvars.copy_context().run, _solve, self.method, problem, self.clock)
            self.running[future] = (sample, problem)

    def in_order(self, futures) -> list[Future]:
        return sorted(futures, key=lambda f: self.running[f][0].index)

    def save(self, future: Future) -> None:
        """Grade and append a finished problem (a cancelled one is dropped: a rerun does it)."""
        sample, problem = self.running.pop(future)
        outcome = future.result()  # a UserError from a worker: the user's mistake about the whole run
        if outcome.cancelled:
            return
        record = _record(sample, problem, outcome.candidates, outcome.usage, self.dataset.style)
        attach_costs(record, *self.costs)  # FLOPs, and each candidate's share of the problem's cost
        if outcome.error is not None:
            record.mark_failed(outcome.error)
            log.warning("problem %d failed: %s", sample.index, outcome.error)
        else:
            grade_records(
                [record], self.grader, style=self.dataset.style, votes=self.config.votes,
                aggregation=self.config.aggregation, box_match=self.config.box_match, engine=self.config.grader,
            )
        if outcome.too_long and not self.fitted:
            self.held.append(record)
            if len(self.held) >= min(self.workers, self.todo):
                raise UserError(f"not one of the first {len(self.held)} prompts fits: {self.held[0].error}")
            return
        if not outcome.too_long and not self.fitted:
            self.fitted = True
            for held in self.held:
                self._append(held)
            self.held = []
        self._append(record)

    def _append(self, record: Record) -> None:
        self.store.append(record)
        self.saved += 1
        self.succeeded += not record.failed
        self.progress.advance(record.correct.get(self.config.votes[0], False))

    def stop(self, signum: int, finished: list[Future], hook: interrupt.SignalHook | None) -> NoReturn:
        """Save the problems that `finished` before the cancel, give the cancelled ones a moment to end, and
        raise `Interrupted`."""
        log.warning("stopping (%s): saving the problems that finished, cancelling the rest",
                    signal.Signals(signum).name)
        if hook is not None:
            hook.stall()
        for future in self.in_order(finished):
            self.save(future)
        wait(self.running, timeout=_CANCEL_GRACE_S)  # so the engine is idle when it is closed
        for future in self.in_order([f for f in self.running if f.done()]):
            if future.exception() is None and future.result().error is None:  # ended between look and cancel
                self.save(future)
        for held in self.held:  # no problem got to show the context fits: these stay failed
            self._append(held)
        done = len(self.dataset.samples) - self.todo + self.succeeded
        log.warning("interrupted: saved %d problem(s) this run finished (%d of %d done)", self.saved, done,
                    len(self.dataset.samples))
        raise interrupt.Interrupted(signum, saved=self.saved, done=done, total=len(self.dataset.samples))


@dataclass
class _Outcome:
    candidates: list[Candidate]
    usage: dict[str, Any]
    error: str | None = None
    too_long: bool = False  # the prompt did not fit the context
    cancelled: bool = False  # abandoned: the run is stopping


def _solve(method, problem: Problem, clock: SharedClock) -> _Outcome:
    """One problem's search with the models bound to its own usage account (affinity: its index).

    Any failure but the user's own mistake about the whole run (`UserError`) fails this problem only.
    """
    account = UsageAccount()
    generator, reward_model = method.generator, method.reward_model
    searching = method.bind(None if generator is None else generator.bind(account, affinity=problem.index),
                            None if reward_model is None else reward_model.bind(account))
    candidates: list[Candidate] = []
    generated = 0  # every token the search generated, pruned branches included (SearchResult)
    error, too_long, cancelled = None, False, False
    with clock.share() as seconds:
        try:
            result = searching.search(problem)
            candidates, generated = result.candidates, result.generated_tokens
        except Cancelled:
            cancelled = True
        except GenerationError as exc:
            error, too_long = one_line(exc), isinstance(exc, PromptTooLong)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - an engine's or a method's failure on this problem
            log.warning("problem %d failed", problem.index, exc_info=True)  # the traceback goes to run.log
            error = f"{type(exc).__name__}: {one_line(exc)}"
    if error is not None or cancelled:  # what the engine generated for it before the failure
        generated = int(account.generator.completion_tokens)
    usage: dict[str, Any] = {"seconds": round(seconds.value, 4), "completion_tokens": generated}
    accounts = [("", account.generator)]
    if method.reward_model is not None:  # every reward model keeps a `usage` (RewardModel's contract)
        accounts.append(("reward_", account.reward_model))
    for prefix, work in accounts:
        usage[f"{prefix}calls"] = round(work.calls, 4)
        usage[f"{prefix}prompt_tokens"] = round(work.prompt_tokens, 2)
        usage[f"{prefix}computed_prompt_tokens"] = round(work.computed_prompt_tokens, 2)
    return _Outcome(candidates, usage, error, too_long, cancelled)


def _record(sample: Sample, problem: Problem, cands: list[Candidate], usage: dict[str, Any], style: str) -> Record:
    candidates = [CandidateRecord(text=c.text, tokens=c.tokens, step_scores=list(c.step_scores),
                                  finish_reason=c.finish_reason, meta=dict(c.meta)) for c in cands]
    return Record(index=sample.index, style=style, input=sample.input, reference=sample.reference,
                  prompt=problem.prompt, candidates=candidates, usage=usage)


def _finish_records(store: RunStore, dataset: Dataset, config: RunConfig) -> list[Record]:
    """The run's records for the current sample set, re-voted where the vote list changed since."""
    wanted = {s.index for s in dataset.samples}
    records = [r for r in store.records() if r.index in wanted]  # failed ones: counted apart by compute_metrics
    stale = [r for r in records if set(config.votes) - set(r.correct)]
    apply_votes(stale, config.votes, config.aggregation)
    return records


class _LogFile(logging.FileHandler):
    """run.log's handler: a line that cannot be written (a full disk) stops the run like any failed write."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if isinstance(sys.exc_info()[1], OSError):  # called inside emit's except block
            raise  # noqa: PLE0704 - re-raise the write's error
        super().handleError(record)


# The run whose log a message belongs to: several runs of one process (a sweep) each log to their own file.
_CURRENT_RUN: contextvars.ContextVar[Path | None] = contextvars.ContextVar("inferencekit_run", default=None)


@contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Messages of this run (its thread and its problems' workers) and of no run in particular go to `path`."""
    handler = _LogFile(path, encoding="utf-8")
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(lambda _record: _CURRENT_RUN.get() in (None, path))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    token = _CURRENT_RUN.set(path)
    try:
        yield
    finally:
        _CURRENT_RUN.reset(token)
        log.removeHandler(handler)
        handler.close()
