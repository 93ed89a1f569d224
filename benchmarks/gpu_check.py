"""GPU check of the transformers backend (HFGenerator), offline, in about a minute.

Builds a random Llama (hidden 512, 8 layers) and a word-level tokenizer in a temporary folder (no
downloads, no assets), loads it through HFGenerator with device_map="auto" for each attention
implementation available, and prints one line per check:

    CHECK <name>: PASS|FAIL|INFO <details>

Checks: greedy agreement of eager with sdpa (float32), batch invariance of greedy and seeded
sampling (float32; bf16 informative), eager and flash_attention_2 against sdpa in bf16 on the same
left-padded inputs (argmax agreement; free-running greedy agreement informative), and tokens/s
at batch 1 and batch 32.
Then, where vLLM is installed (or with `--only-vllm`), the same checkpoint through the vllm backend
(VLLMGenerator: bf16 on a GPU, float32 on the CPU): greedy agreement with the hf backend at the same dtype
(informative in bf16), seeded sampling repeatable and independent of its batch companions (informative
in bf16), prefix-cache hits counted in usage, tensor parallel over 2 GPUs where there are 2 (greedy agreement
with one GPU), and tokens/s at batch 1 and batch 32.
Exit status 1 if any check FAILs. `--cpu` runs a smaller version on the CPU.

    python benchmarks/gpu_check.py            # on a GPU machine
    python benchmarks/gpu_check.py --cpu      # smoke test anywhere
    python benchmarks/gpu_check.py --only-vllm [--cpu]   # the vllm backend's checks alone
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import inferencekit  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from inferencekit.models.base import GeneratorSpec, SamplingParams
from inferencekit.models.hf import HFGenerator

WORDS = (
    "the a of to and in is it that for on with as was at by an be this from or have not are but what all were "
    "when we there can one your which their said if do will each about how up out them then she many some so "
    "these would other into has more her two like him see time could no make than first been its who now people"
).split()

FAILED: list[str] = []


def report(name: str, status: str, details: str) -> None:
    if status == "FAIL":
        FAILED.append(name)
    print(f"CHECK {name}: {status} {details}", flush=True)


def build_checkpoint(folder: Path, hidden: int, layers: int, vocab: int, init_range: float = 0.3) -> None:
    """Save a random Llama and a word-level fast tokenizer of `vocab` entries to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    names = specials + WORDS + [f"w{i}" for i in range(vocab - len(specials) - len(WORDS))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(str(folder))
    config = LlamaConfig(
        vocab_size=len(names),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096,
        initializer_range=init_range,  # larger than usual: varied text instead of one repeated token
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))


def make_prompts(count: int, seed: int = 0) -> list[str]:
    """Prompts of varied lengths (3 to 60 words), so batches need real left padding."""
    rng = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(count):
        length = int(torch.randint(3, 61, (1,), generator=rng))
        picks = torch.randint(0, len(WORDS), (length,), generator=rng).tolist()
        prompts.append(" ".join(WORDS[i] for i in picks))
    return prompts


def load(folder: Path, attn: str, dtype: str, device_map: str | None) -> HFGenerator | None:
    try:
        spec = GeneratorSpec(
            name=f"random-{attn}-{dtype}",
            path=str(folder),
            backend="hf",
            dtype=dtype,
            device_map=device_map,
            attn_implementation=attn,
        )
        return HFGenerator(spec)
    except Exception as error:  # noqa: BLE001 - report and go on with the other checks
        report(f"load_{attn}_{dtype}", "FAIL", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        return None


def texts_of(gen: HFGenerator, prompts: list[str], params: SamplingParams) -> list[list[str]]:
    return [[c.text for c in completions] for completions in gen.generate(prompts, params)]


def first_words(text: str, k: int) -> list[str]:
    return text.split()[:k]


def agreement(a: list[list[str]], b: list[list[str]], k: int) -> tuple[int, int]:
    """Prompts whose first k words agree (word-level tokenizer: a word is a token)."""
    same = sum(first_words(x[0], k) == first_words(y[0], k) for x, y in zip(a, b, strict=True))
    return same, len(a)


def teacher_forced(gen: HFGenerator, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax and its log-probability at every real position of left-padded `sequences`, one forward pass each 8."""
    tops, values = [], []
    device = gen.input_device
    for start in range(0, len(sequences), 8):
        chunk = sequences[start : start + 8]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), gen.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(chunk):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = gen.model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
            ).logits.float()
        best = torch.log_softmax(logits, -1).max(-1)
        real = mask.bool().to(device)
        tops.append(best.indices[real].cpu())
        values.append(best.values[real].cpu())
    return torch.cat(tops), torch.cat(values)


def batch_invariance(gen: HFGenerator, prompts: list[str], params: SamplingParams) -> tuple[int, int]:
    batched = gen.generate(prompts, params)
    alone = [gen.generate([p], params)[0] for p in prompts]
    pairs = [(x.text, y.text) for xs, ys in zip(batched, alone, strict=True) for x, y in zip(xs, ys, strict=True)]
    return sum(x == y for x, y in pairs), len(pairs)


def throughput(gen: HFGenerator, prompts: list[str], new_tokens: int) -> tuple[float, int]:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=1)
    gen.generate(prompts[:1], params.replace(max_new_tokens=4))  # warm-up
    before = gen.usage.completion_tokens
    start = time.perf_counter()
    gen.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = gen.usage.completion_tokens - before
    return tokens / seconds, tokens


def load_vllm(folder: Path, dtype: str, **model_args) -> Any:
    from inferencekit.models.vllm import VLLMGenerator

    try:
        spec = GeneratorSpec(name=f"random-vllm-{dtype}", path=str(folder), backend="vllm", dtype=dtype, n_ctx=1024,
                             kv_cache_mib=512, **model_args)
        return VLLMGenerator(spec)
    except Exception as error:  # noqa: BLE001 - report and go on with the other checks
        report(f"load_vllm_{dtype}", "FAIL", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        return None


def vllm_checks(folder: Path, prompts: list[str], greedy: SamplingParams, sampled: SamplingParams, k: int,
                on_gpu: bool, new_tokens: int, device_map: str | None) -> None:
    """The vllm backend on the same checkpoint: agreement with hf, seeding, prefix cache, parallelism, speed."""
    dtype = "bfloat16" if on_gpu else "float32"
    exact = "PASS" if dtype == "float32" else "INFO"  # bf16 kernels differ between engines and batch shapes
    reference = load(folder, "sdpa", dtype, device_map)
    gen = load_vllm(folder, dtype)
    if gen is None:
        return
    if reference is not None:
        same, total = agreement(texts_of(gen, prompts, greedy), texts_of(reference, prompts, greedy), k)
        report(f"vllm_greedy_vs_hf_{dtype}", exact if same == total else "FAIL" if exact == "PASS" else "INFO",
               f"first {k} tokens equal for {same}/{total} prompts")
        reference.close()
    same, total = batch_invariance(gen, prompts[:4], sampled)
    report(f"vllm_batch_invariance_sampling_{dtype}", exact if same == total else "FAIL" if exact == "PASS" else "INFO",
           f"{same}/{total} equal")
    again = texts_of(gen, prompts[:4], sampled)
    report("vllm_seeded_sampling_repeatable", "PASS" if again == texts_of(gen, prompts[:4], sampled) else "FAIL",
           "same seed, same call twice")
    long = " ".join(prompts) * 4
    gen.generate([long], greedy)
    before = gen.usage.copy()
    gen.generate([long + " the"], greedy)
    used = gen.usage.since(before)
    report("vllm_prefix_cache", "PASS" if used.computed_prompt_tokens < used.prompt_tokens else "FAIL",
           f"{used.computed_prompt_tokens} of {used.prompt_tokens} prompt tokens computed on a repeated prefix")
    one_gpu = texts_of(gen, prompts, greedy)
    for batch in (1, 32):
        rate, tokens = throughput(gen, (prompts * 8)[:batch], new_tokens)
        report(f"vllm_throughput_{dtype}_batch{batch}", "INFO", f"{rate:.0f} tokens/s ({tokens} tokens)")
    print(f"vllm engine: {gen.engine_settings()}", flush=True)
    gen.close()
    if on_gpu and torch.cuda.device_count() >= 2:
        tp = load_vllm(folder, dtype, tensor_parallel_size=2)
        if tp is not None:
            same, total = agreement(texts_of(tp, prompts, greedy), one_gpu, k)
            report("vllm_tensor_parallel_2", "INFO", f"first {k} tokens equal to one GPU's for {same}/{total} prompts")
            tp.close()
    else:
        report("vllm_tensor_parallel_2", "INFO", "skipped: fewer than 2 GPUs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="small smoke test on the CPU")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--init-range", type=float, default=0.3, help="std of the random weights")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--first-tokens", type=int, default=8, help="tokens compared between implementations")
    parser.add_argument("--only-vllm", action="store_true", help="only the vllm backend's checks")
    args = parser.parse_args()

    on_gpu = torch.cuda.is_available() and not args.cpu
    hidden = args.hidden or (512 if on_gpu else 128)
    layers = args.layers or (8 if on_gpu else 2)
    new_tokens = args.new_tokens or (128 if on_gpu else 16)
    big_batch = 32 if on_gpu else 8
    device_map = "auto" if on_gpu else "cpu"
    if importlib.util.find_spec("accelerate") is None:
        report("device_map_auto", "INFO", "accelerate not installed: device_map left unset (one device)")
        device_map = None
    import transformers

    where = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    print(
        f"env: torch {torch.__version__}, transformers {transformers.__version__}, device {where}, "
        f"model hidden={hidden} layers={layers} vocab={args.vocab}",
        flush=True,
    )
    attns = ["sdpa", "eager"]
    if on_gpu and importlib.util.find_spec("flash_attn") is not None:
        attns.append("flash_attention_2")
    else:
        report("flash_attention_2", "INFO", "skipped: flash_attn not importable" if on_gpu else "skipped on CPU")

    prompts = make_prompts(big_batch)
    k = args.first_tokens
    greedy = SamplingParams(max_new_tokens=k)
    sampled = SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=k, seed=11)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "random-llama"
        build_checkpoint(folder, hidden, layers, args.vocab, args.init_range)

        if importlib.util.find_spec("vllm") is not None:
            vllm_checks(folder, prompts, greedy, sampled, k, on_gpu, new_tokens, device_map)
        elif args.only_vllm:
            report("vllm", "FAIL", "vLLM is not installed")
        else:
            report("vllm", "INFO", "skipped: vLLM is not installed")
        if args.only_vllm:
            attns = []
        eager32 = None if args.only_vllm else load(folder, "eager", "float32", device_map)
        fp32 = None if args.only_vllm else load(folder, "sdpa", "float32", device_map)
        if fp32 is not None and eager32 is not None:
            same, total = agreement(texts_of(fp32, prompts, greedy), texts_of(eager32, prompts, greedy), k)
            status = "PASS" if same == total else "FAIL"
            report("greedy_eager_vs_sdpa_fp32", status, f"first {k} tokens equal for {same}/{total} prompts")
            eager32.close()
        if fp32 is not None:
            same, total = batch_invariance(fp32, prompts[:8], greedy)
            report("batch_invariance_greedy_fp32", "PASS" if same == total else "FAIL", f"{same}/{total} equal")
            same, total = batch_invariance(fp32, prompts[:4], sampled)
            report("batch_invariance_sampling_fp32", "PASS" if same == total else "FAIL", f"{same}/{total} equal")
            again = texts_of(fp32, prompts[:4], sampled)
            report(
                "seeded_sampling_repeatable_fp32",
                "PASS" if again == texts_of(fp32, prompts[:4], sampled) else "FAIL",
                "same seed, same call twice",
            )
            fp32.close()

        outputs: dict[str, list[list[str]]] = {}
        forced: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        sequences: list[list[int]] = []
        for attn in attns:
            gen = load(folder, attn, "bfloat16", device_map)
            if gen is None:
                continue
            outputs[attn] = texts_of(gen, prompts, greedy)
            if not sequences:  # prompt + the first implementation's continuation, fed to all of them
                sequences = [gen.encode(p + " " + out[0]) for p, out in zip(prompts, outputs[attn], strict=True)]
            forced[attn] = teacher_forced(gen, sequences)
            if attn == "sdpa":
                same, total = batch_invariance(gen, prompts[:8], greedy)
                # bf16 kernels may round differently with batch shape: informative only
                report("batch_invariance_greedy_bf16", "INFO", f"{same}/{total} equal")
            for batch in (1, big_batch):
                rate, tokens = throughput(gen, prompts[:batch], new_tokens)
                report(f"throughput_{attn}_bf16_batch{batch}", "INFO", f"{rate:.0f} tokens/s ({tokens} tokens)")
            gen.close()
        for attn in attns[1:]:
            if "sdpa" not in outputs or attn not in outputs:
                continue
            # bf16 rounding differs between kernels and can flip near-tied greedy choices: informative
            same, total = agreement(outputs["sdpa"], outputs[attn], k)
            report(f"greedy_{attn}_vs_sdpa_bf16", "INFO", f"first {k} tokens equal for {same}/{total} prompts")
            # the same left-padded inputs through both: a broken mask or padding path shows up here
            (top_a, value_a), (top_b, value_b) = forced["sdpa"], forced[attn]
            rate = (top_a == top_b).float().mean().item()
            drift = (value_a - value_b).abs().max().item()
            report(
                f"padded_forward_{attn}_vs_sdpa_bf16",
                "PASS" if rate >= 0.8 else "FAIL",
                f"argmax agrees at {rate:.1%} of {len(top_a)} positions; max |d logprob| {drift:.3f}",
            )
    print(f"done in {time.perf_counter() - started:.1f}s; failed: {', '.join(FAILED) or 'none'}", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
