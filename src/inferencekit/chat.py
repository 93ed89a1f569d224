"""A multi-turn chat with a model in the terminal, each reply scored by an optional reward model.

Lines starting with `/` are commands (see HELP); everything else is a user message. With a terminal,
input comes from `input()` (with readline history when available); piped input is read line by line
without prompts. Replies stream as they are generated (`Generator.stream`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from inferencekit.errors import UserError, first_line
from inferencekit.files import write_atomic
from inferencekit.models.base import Generator, Message, SamplingParams

if TYPE_CHECKING:
    from inferencekit.reward_models.base import RewardModel

HELP = ("commands: /bon N (answer the last message again by best-of-N), /system TEXT, /reset, /save FILE, "
        "/load FILE, /help, /exit")
BON_TEMPERATURE = 0.8  # best-of-N needs different samples: used when the chat itself decodes greedily


class ChatSession:
    """The conversation and what it talks to: a generator, an optional reward model, sampling settings."""

    def __init__(self, generator: Generator, reward_model: RewardModel | None = None, *,
                 params: SamplingParams | None = None, system: str | None = None, aggregation: str = "last",
                 out: TextIO | None = None, stream: bool = True, label: str | None = None) -> None:
        self.generator, self.reward_model = generator, reward_model
        self.label = label or getattr(generator, "name", "model")
        self.params = params or SamplingParams(max_new_tokens=512)
        self.system = system
        self.aggregation = aggregation
        self.messages: list[Message] = []
        self.out = out or sys.stdout
        self.stream = stream
        self._draws = 0  # each sampled generation gets its own seed, so /bon twice gives new samples

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def conversation(self) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def _prompt(self) -> str:
        """The chat prompt, dropping the oldest turns when it would not leave room for a reply.

        Any backend that declares its `context_length` is trimmed; one that cannot tell is sent all turns.
        """
        n_ctx = self.generator.context_length
        prompt = self.generator.chat_prompt(self.conversation())
        budget = n_ctx - self.params.max_new_tokens if n_ctx else None
        while budget is not None and len(self.messages) > 1 and self.generator.count_tokens(prompt) > budget:
            self.messages = self.messages[2:] if self.messages[0]["role"] == "user" else self.messages[1:]
            self.say(f"(context full: dropped the oldest turn, {len(self.messages)} messages left)")
            prompt = self.generator.chat_prompt(self.conversation())
        return prompt

    def _next_params(self, **changes: Any) -> SamplingParams:
        self._draws += 1
        return self.params.replace(seed=self.params.seed + self._draws, **changes)

    def _last_user(self) -> str | None:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), None)

    # ---------------------------------------------------------------- replies

    def reply(self, text: str) -> str:
        """Answer a user message: stream (or print) the reply, then its length, time and reward."""
        self.messages.append({"role": "user", "content": text})
        try:
            prompt = self._prompt()
            params = self._next_params()
            start = time.perf_counter()
            if self.stream:
                pieces = []
                for piece in self.generator.stream(prompt, params):
                    pieces.append(piece)
                    self.out.write(piece)
                    self.out.flush()
                answer = "".join(pieces).strip()
                self.say()
                tokens = self.generator.count_tokens(answer)
            else:
                completion = self.generator.generate([prompt], params)[0][0]
                answer, tokens = completion.text.strip(), completion.tokens
                self.say(answer)
        except BaseException:
            self.messages.pop()  # an unanswered message would break the user/assistant alternation
            raise
        self.messages.append({"role": "assistant", "content": answer})
        info = f"[{tokens} tokens, {time.perf_counter() - start:.1f} s"
        if self.reward_model is not None:
            info += "; " + self._reward_text(self.reward_model.score([text], [[answer]])[0][0])
        self.say(info + "]")
        return answer

    def _reward_text(self, steps: Sequence[float]) -> str:
        from inferencekit.voting import aggregate

        text = f"reward {aggregate(steps, self.aggregation):.3f}"
        if len(steps) > 1:
            text += f" ({self.aggregation} of steps " + " ".join(f"{s:.3f}" for s in steps) + ")"
        return text

    def best_of_n(self, n: int) -> str:
        """Answer the last user message again with N samples; keep the best (reward model, else majority)."""
        from inferencekit.grading import extract_answer
        from inferencekit.voting import aggregate, best_index, same_answer, vote

        question = self._last_user()
        if question is None:
            raise UserError("/bon needs a message to answer first")
        while self.messages[-1]["role"] != "user":
            self.messages.pop()  # the reply being replaced
        prompt = self._prompt()
        params = self._next_params(n=n, temperature=self.params.temperature or BON_TEMPERATURE)
        texts = [c.text.strip() for c in self.generator.generate([prompt], params)[0]]
        answers = [extract_answer(t, "math") for t in texts]
        if self.reward_model is not None:
            steps = self.reward_model.score([question], [texts])[0]
            scores = [aggregate(s, self.aggregation) for s in steps]
            best = best_index(scores)
            best = 0 if best is None else best  # no sample got a score: keep the first
            for i, text in enumerate(texts):
                self.say(f"sample {i + 1}: {self._reward_text(steps[i])}, answer {answers[i]}: {_short(text)}")
        else:
            winner = vote("majority", answers)
            same = same_answer(answers, winner)
            best = same.index(True) if any(same) else 0
            for i, text in enumerate(texts):
                self.say(f"sample {i + 1}: answer {answers[i]}: {_short(text)}")
            self.say(f"majority answer: {winner} ({sum(same)} of {n})" if winner
                     else "no sample gave an answer: keeping sample 1")
        self.say(f"best of {n}: sample {best + 1}")
        self.say(texts[best])
        self.messages.append({"role": "assistant", "content": texts[best]})
        return texts[best]

    # ---------------------------------------------------------------- commands

    def save(self, path: str) -> None:
        data = {"system": self.system, "messages": self.messages, "model": self.label}
        try:
            write_atomic(Path(path).expanduser(), json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:  # the conversation stays; the user can /save elsewhere
            raise UserError(f"cannot save to {path}: {exc.strerror or exc}") from None
        self.say(f"saved {len(self.messages)} messages to {path}")

    def load(self, path: str) -> None:
        try:
            data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
            messages = data["messages"]
            ok = all(
                isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
                for m in messages
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"cannot load {path}: {exc}") from None
        if not ok or not isinstance(data.get("system"), (str, type(None))):
            raise UserError(f"cannot load {path}: messages must be user/assistant turns with text content")
        self.system = data.get("system")
        self.messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        self.say(f"loaded {len(self.messages)} messages from {path}")

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the chat should end."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.reply(line)
            return True
        command, _, arg = line.partition(" ")
        arg = arg.strip()
        if command in ("/exit", "/quit"):
            return False
        if command == "/help":
            self.say(HELP)
        elif command == "/system":
            self.system = arg or None
            self.say(f"system prompt set: {arg}" if arg else "system prompt cleared")
        elif command == "/reset":
            self.messages = []
            self.say("conversation cleared" + (" (system prompt kept)" if self.system else ""))
        elif command == "/bon":
            if not arg.isdigit() or int(arg) < 1:
                raise UserError("usage: /bon N, with N >= 1")
            self.best_of_n(int(arg))
        elif command in ("/save", "/load"):
            if not arg:
                raise UserError(f"usage: {command} FILE")
            self.save(arg) if command == "/save" else self.load(arg)
        else:
            self.say(f"unknown command {command}; {HELP}")
        return True


def open_session(
    model: str | None = None,
    *,
    backend: str | None = None,
    model_args: dict[str, Any] | None = None,
    reward_model: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    system: str | None = None,
    aggregation: str = "last",
) -> ChatSession:
    """Load the model (default: the embedded one) and the reward model; settings resolve as a run's do
    (flags over the model preset's defaults over built-in ones, `config.resolve_flags`)."""
    from inferencekit.config import resolve_flags
    from inferencekit.models import load_generator, model_defaults, resolve_model

    config = resolve_flags(
        {"model": model, "backend": backend, "model_args": model_args, "max_new_tokens": max_new_tokens,
         "temperature": temperature, "top_p": top_p, "seed": seed},
        preset_defaults=model_defaults,
    )
    spec = resolve_model(config.model, config.backend, config.model_args)
    params = config.sampling_params(seed=seed)
    generator = load_generator(spec)
    rm = None
    if reward_model:
        from inferencekit.reward_models import load_reward_model

        try:
            rm = load_reward_model(reward_model, step_separator=config.step_separator, generator=generator)
        except BaseException:
            generator.close()
            raise
    return ChatSession(generator, rm, params=params, system=system, aggregation=aggregation, label=spec.name)


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _lines(stdin: TextIO, interactive: bool) -> Iterator[str]:
    if not interactive:
        yield from stdin
        return
    try:
        import readline  # noqa: F401 - gives input() line editing and history
    except ImportError:
        pass
    while True:
        try:
            yield input("you> ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print("^C (/exit or Ctrl-D to leave)")


def run_chat(session: ChatSession, stdin: TextIO | None = None, interactive: bool | None = None) -> int:
    """The read-reply loop until /exit or end of input; errors in one line are reported and the chat goes on."""
    stdin = stdin or sys.stdin
    interactive = stdin.isatty() if interactive is None else interactive
    if interactive:
        rm = getattr(session.reward_model, "name", None)
        session.say(f"chat with {session.label}"
                    f"{f', reward model {rm}' if rm else ''}; /help for commands, /exit or Ctrl-D to leave")
    for line in _lines(stdin, interactive):
        try:
            if not session.handle(line):
                break
        except UserError as exc:
            session.say(f"error: {exc}")
        except ValueError as exc:  # e.g. a prompt longer than the model's context
            session.say(f"error: {first_line(exc)}")
        except KeyboardInterrupt:
            session.say("\n(interrupted)")
    return 0
