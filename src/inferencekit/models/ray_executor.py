"""`--executor ray --replicas K`: in-process engines (llamacpp, hf) as Ray actors behind one `ReplicaPool`.

Each actor loads the engine once (`num_gpus` per actor; an hf engine's `device_map` shards a model over
the actor's GPUs) and serves each request in one of its threads (a threaded actor, `max_concurrency`), which
hands it to the engine's `submit`: the engine batches what is pending (the llama.cpp decode loop, the hf
backend's `Batcher`), and each request's own work comes back with its completions, so per-problem usage is
exact under Ray as in-process. The driver keeps
everything else: the runner hands out problems as they finish (the pool routes each request to the
least busy actor, one problem's requests to the same actor), and it alone writes the run folder, so
resume is unchanged. An actor that dies is restarted by Ray (`max_restarts=-1`) while its unfinished
requests are retried on the others: nothing is lost, nothing is recorded twice.

`ray.init(address=...)` joins `--ray-address` or `$RAY_ADDRESS`, else starts a local cluster.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from inferencekit.errors import UserError
from inferencekit.models.base import Completion, GeneratorSpec, Message, Request, SamplingParams, Usage, UsageAccount
from inferencekit.models.pool import Replica, ReplicaError, ReplicaPool, RetryPolicy

_SPARE_THREADS = 4  # actor threads beyond the pool's requests in flight: chat templates, token counts


class EngineActor:
    """Holds one engine; concurrent requests (one actor thread each) are batched by the engine itself."""

    def __init__(self, spec: GeneratorSpec) -> None:
        from inferencekit.models.backends import load_engine

        self.engine = load_engine(spec)

    def ready(self) -> int:
        return os.getpid()

    def generate(self, prompt: str, params: SamplingParams) -> tuple[list[Completion], Usage]:
        """The completions of one request and exactly the work done for it (no `calls`: the driver counts those)."""
        account = UsageAccount()
        (completions,) = self.engine.submit([Request(prompt, params, account)])
        return completions, account.generator

    def chat_prompt(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.engine.chat_prompt(messages, add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def engine_settings(self) -> dict[str, Any]:
        return self.engine.engine_settings()


class RayActorReplica(Replica):
    def __init__(self, actor: Any, name: str) -> None:
        self.actor = actor
        self.name = name

    async def _call(self, ref) -> Any:
        import ray

        dead = tuple(getattr(ray.exceptions, n) for n in ("RayActorError", "ActorUnavailableError")
                     if hasattr(ray.exceptions, n))
        try:
            return await ref
        except dead as exc:
            raise ReplicaError(f"actor unavailable ({type(exc).__name__})", retryable=True) from None
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            text = str(cause).strip().splitlines()
            raise ReplicaError(text[0] if text else type(cause).__name__, retryable=False) from None

    async def request(self, prompt: str, params: SamplingParams) -> tuple[list[Completion], Usage]:
        return await self._call(self.actor.generate.remote(prompt, params))

    async def count_tokens(self, text: str) -> int:
        return await self._call(self.actor.count_tokens.remote(text))

    async def chat_prompt(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return await self._call(self.actor.chat_prompt.remote(messages, add_generation_prompt))


class RayPool(ReplicaPool):
    """K actors, each with its own engine, as one generator."""

    backend = "ray"

    def __init__(self, spec: GeneratorSpec, replicas: int = 1, address: str | None = None,
                 num_gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'inferencekit[ray]'") from None
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        remote = ray.remote(EngineActor).options(
            num_cpus=0, num_gpus=num_gpus, max_restarts=-1, max_task_retries=0, scheduling_strategy="SPREAD",
            max_concurrency=spec.max_batch_sequences + _SPARE_THREADS,
        )
        actors = [remote.remote(spec) for _ in range(replicas)]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            self._shutdown(actors)
            lines = str(exc).strip().splitlines()
            raise UserError(f"a Ray actor could not load {spec.path!r}: {lines[-1] if lines else exc}") from None
        super().__init__(
            [RayActorReplica(a, f"ray actor {k}") for k, a in enumerate(actors)],
            max_in_flight=spec.max_batch_sequences, cooldown=5.0,
            policy=RetryPolicy.of(spec),
        )
        self.actors = actors
        self.spec = spec

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self._loop.run(self._call(lambda r: r.chat_prompt(list(messages), add_generation_prompt), None))

    def engine_settings(self) -> dict[str, Any]:
        """The first actor's engine's settings (every actor loads the same spec)."""
        return {**self._ray.get(self.actors[0].engine_settings.remote()), "replicas": len(self.actors)}

    def close(self) -> None:
        super().close()
        self._shutdown(self.actors)

    def _shutdown(self, actors: list) -> None:
        for actor in actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
        if self._owns_ray:
            self._ray.shutdown()
