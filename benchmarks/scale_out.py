"""Scale-out throughput: one llama.cpp server vs a pool of two (and vs two Ray actors), same best-of-N job.

    python benchmarks/scale_out.py [--problems 8] [--n 4] [--max-new-tokens 64] [--threads 1] [--no-ray]

Each server (`python -m llama_cpp.server`, the embedded SmolLM2-135M) and each Ray actor (the in-process
llama.cpp engine) runs with `--threads` threads. The job: best-of-N at temperature 0.8 on the first
GSM8K-mini problems, all requests sent at once through the `openai` backend's pool (servers) or the
Ray executor's pool (actors). A warm-up request per replica comes first. Prints seconds, generated
tokens and tokens/s per setup, `ray_ratio=` (two actors / one server) when Ray is installed, and last
`ratio=<pool of two servers' tokens/s / one server's>` (target >= 1.6 on an idle 2-core machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import inferencekit  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from inferencekit.datasets import load_dataset  # noqa: E402
from inferencekit.models import load_generator, resolve_model  # noqa: E402
from inferencekit.models.base import Generator, SamplingParams  # noqa: E402
from inferencekit.prompts import build_messages  # noqa: E402
from llama_servers import GGUF, Server  # noqa: E402


def throughput(generator: Generator, questions: list[str], params: SamplingParams, label: str) -> float:
    prompts = [generator.chat_prompt(m) for m in questions]
    generator.generate(prompts[:1], params.replace(n=1, max_new_tokens=4))  # warm-up
    tokens = generator.usage.completion_tokens
    start = time.perf_counter()
    outputs = generator.generate(prompts, [params.replace(seed=k) for k in range(len(prompts))])
    seconds = time.perf_counter() - start
    tokens = generator.usage.completion_tokens - tokens
    assert all(len(cs) == params.n for cs in outputs)
    print(f"{label:24} {seconds:7.2f} s  {tokens:6d} tokens  {tokens / seconds:7.1f} tokens/s", flush=True)
    return tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--in-flight", type=int, default=1,
                    help="requests in flight per server (llama-cpp-python's server runs one at a time)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray actors")
    args = ap.parse_args()

    dataset = load_dataset("gsm8k-mini", limit=args.problems)
    questions = [build_messages(s, dataset, None, None) for s in dataset.samples]
    params = SamplingParams(n=args.n, temperature=0.8, max_new_tokens=args.max_new_tokens)
    servers = [Server(threads=args.threads), Server(threads=args.threads)]
    try:
        for s in servers:
            s.start()
        rates = {}
        for label, urls in (("one server", servers[:1]), ("pool of two servers", servers)):
            spec = resolve_model(GGUF, backend="openai",
                                 model_args={"base_url": [s.url for s in urls], "max_batch_sequences": args.in_flight})
            generator = load_generator(spec)
            try:
                rates[label] = throughput(generator, questions, params, label)
            finally:
                generator.close()
    finally:
        for s in servers:
            s.kill()
    if not args.no_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray not installed: no Ray comparison", flush=True)
        else:
            spec = resolve_model(GGUF, backend="llamacpp", model_args={"n_threads": args.threads})
            generator = load_generator(spec, executor="ray", replicas=2)
            try:
                ray_rate = throughput(generator, questions, params, "two Ray actors")
            finally:
                generator.close()
            print(f"ray_ratio={ray_rate / rates['one server']:.2f}")
    print(f"ratio={rates['pool of two servers'] / rates['one server']:.2f}")


if __name__ == "__main__":
    main()
