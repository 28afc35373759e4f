"""A 7B model decoding on one GPU: tokens/s against sequences in flight (random weights).

The question behind it (issue 11): what W x K keeps a 7B model on one GPU busy. The answer is
a property of the model's size and the GPU: a decode step reads all the weights once whatever
the batch, so tokens/s grows with the sequences decoded together until the step stops being
bound by reading the weights. This script measures that curve for the paper's 7B
architectures (:data:`testing.tiny_models.SEVEN_B`: Mistral-7B-v0.1, Llama-2-7b, Falcon-7b) with
random bf16 weights (the speed of a model does not depend on its weights) and random prompts.

It uses transformers' ``generate`` (eager PyTorch, no CUDA graphs; a static KV cache written
in place unless ``--cache dynamic``), not vLLM: vLLM is not
installed on the GPU machine this project was lent and cannot be carried to it. For each batch
size B it prints

- ``prefill tok/s``: B x P prompt tokens over the time of ``generate(max_new_tokens=1)``;
- ``step ms`` and ``decode tok/s``: one decode step of the whole batch, from the time of
  ``generate(max_new_tokens=N)`` less that of the prefill, over N - 1 steps (EOS off);
- ``kernel ms`` and ``kernel tok/s``: the GPU's own time per decode step, summed over the
  CUDA kernels ``torch.profiler`` records in a short decode: the step time of an engine that
  launches the same kernels without gaps (vLLM replays CUDA graphs for decoding), so
  ``kernel tok/s`` is an upper bound of what such an engine gets from these kernels, and the
  batch at which it stops growing is where a server is busy;
- ``peak GiB``: the most GPU memory allocated (weights, KV cache, activations).

Predictions written before the first run (H200, 4.3 TB/s copy, ~790 TFLOP/s bf16): a decode
step reads 14.5 GB of weights (Mistral-7B): >= 3.4 ms, so <= ~300 tok/s at B = 1; the step
stays near that until the KV cache read (128 KiB per token for Mistral, 512 KiB for Llama-2) and
the matrix work (2 x 7.2 GFLOP per token) add up: ~7-10 ms at B = 256 for Mistral, ~25-30K
kernel tok/s; eager transformers is launch-bound at small B (~25-35 ms a step).
Measured (one H200, 2026-12-04): at B = 1 6.3-6.8 ms of kernels a step (twice the weight-read
floor) in a 22-29 ms eager step; Llama-2 at B = 256 21 ms (12K kernel tok/s), but Mistral 78 ms
and Falcon 143 ms: with a mask transformers copies grouped keys and values out to every query
head each step (``repeat_kv``; read in its code, not timed apart), which the prediction left
out. Tables and what they say for W x K: ``docs/generation-scale.md``.

    python benchmarks/bench_gpu_decode.py                       # Mistral-7B shape, on CUDA
    python benchmarks/bench_gpu_decode.py --arch LlamaForCausalLM --batches 1,8,64,256
    python benchmarks/bench_gpu_decode.py --tiny --device cpu   # the script's own check
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere, without an install
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from testing.tiny_models import SEVEN_B, model_config  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generate(model: Any, ids: torch.Tensor, new_tokens: int, cache: str) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens (EOS never ends it), without ``torch.compile``."""
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                          cache_implementation=cache, disable_compile=True)


def timed_generate(model: Any, ids: torch.Tensor, new_tokens: int, device: str,
                   cache: str) -> float:
    """Seconds for :func:`generate` of ``new_tokens`` tokens."""
    sync(device)
    start = time.perf_counter()
    out = generate(model, ids, new_tokens, cache)
    sync(device)
    seconds = time.perf_counter() - start
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"generate made {out.shape[1] - ids.shape[1]} tokens, not {new_tokens}")
    return seconds


def kernel_seconds(model: Any, ids: torch.Tensor, new_tokens: int, cache: str) -> float:
    """GPU kernel time (s) of one :func:`generate` of ``new_tokens`` tokens, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        generate(model, ids, new_tokens, cache)
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    return sum(e.time_range.elapsed_us() for e in prof.events()
               if e.device_type == cuda) / 1e6


def measure(model: Any, batch: int, prompt: int, new: int, vocab: int, device: str,
            profile_steps: int, cache: str) -> dict[str, Any]:
    """One batch size: prefill, decode and (on CUDA) kernel time per step."""
    ids = torch.randint(3, vocab, (batch, prompt), device=device)
    timed_generate(model, ids, 4, device, cache)  # warm-up at this shape (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    prefill = timed_generate(model, ids, 1, device, cache)
    full = timed_generate(model, ids, new, device, cache)
    step = (full - prefill) / (new - 1)
    row: dict[str, Any] = {"batch": batch, "prefill_s": prefill, "prefill_tok_s": batch * prompt
                           / prefill, "step_ms": step * 1e3, "decode_tok_s": batch / step}
    if device.startswith("cuda"):
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        one = kernel_seconds(model, ids, 1, cache)
        more = kernel_seconds(model, ids, 1 + profile_steps, cache)
        kernel_step = (more - one) / profile_steps
        if kernel_step > 0:  # else the profiler recorded no kernels: leave the columns out
            row |= {"kernel_ms": kernel_step * 1e3, "kernel_tok_s": batch / kernel_step,
                    "gpu_busy": kernel_step / step}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="MistralForCausalLM", choices=sorted(SEVEN_B),
                        help="which of the paper's 7B architectures (default: Mistral-7B)")
    parser.add_argument("--batches", default="1,8,32,64,128,256",
                        help="comma-separated sequences decoded together")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--profile-steps", type=int, default=8,
                        help="decode steps whose kernels are summed (CUDA only)")
    parser.add_argument("--cache", default="static", choices=["static", "dynamic"],
                        help="KV cache: static (preallocated, written in place, as a server's) "
                        "or dynamic (grown by concatenation every step)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-layer model of the same architecture: checks the script")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; --device cpu --tiny checks the script on a CPU")

    shape = {} if args.tiny else SEVEN_B[args.arch]
    config = model_config(args.arch, **shape)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(args.device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    built = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    gpu = (torch.cuda.get_device_name() if args.device.startswith("cuda")
           else platform.processor() or "cpu")
    print(f"{args.arch}{' (tiny)' if args.tiny else ''}: {params / 1e9:.2f}B parameters, "
          f"{dtype}, built in {built:.1f} s on {gpu}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, attention {config._attn_implementation}")
    print(f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens a sequence, "
          f"{args.cache} KV cache")
    rows = []
    with torch.inference_mode():
        for batch in [int(b) for b in args.batches.split(",")]:
            row = measure(model, batch, args.prompt_tokens, args.new_tokens, config.vocab_size,
                          args.device, args.profile_steps, args.cache)
            rows.append(row)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()), flush=True)

    print(f"\n{args.arch}: {params / 1e9:.2f}B, {gpu}")
    print("| B | prefill tok/s | step ms | decode tok/s | kernel ms | kernel tok/s | busy "
          "| peak GiB |\n|" + "---:|" * 8)
    nan = float("nan")
    for r in rows:
        print(f"| {r['batch']} | {r['prefill_tok_s']:.0f} | {r['step_ms']:.1f} | "
              f"{r['decode_tok_s']:.0f} | {r.get('kernel_ms', nan):.2f} | "
              f"{r.get('kernel_tok_s', nan):.0f} | {r.get('gpu_busy', nan):.2f} | "
              f"{r.get('peak_gib', nan):.1f} |")
    if args.out:
        args.out.write_text(json.dumps({"arch": args.arch, "tiny": args.tiny, "gpu": gpu,
                                        "params": params, "prompt_tokens": args.prompt_tokens,
                                        "new_tokens": args.new_tokens, "cache": args.cache,
                                        "torch": torch.__version__,
                                        "transformers": transformers.__version__,
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
