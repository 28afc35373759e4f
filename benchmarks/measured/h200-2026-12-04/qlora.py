"""QLoRA (load_in_4bit) through training.lora.train_lora on CUDA: a tiny Llama, then a 7B shape."""
import json
import sys
import time

import torch

sys.path.insert(0, ".")
sys.path.insert(0, "benchmarks")
from bench_training import instruction_examples, safety_examples

from testing.tiny_models import SEVEN_B, save_tiny
from training.lora import TrainConfig, train_lora
from training.mix import build_mix

which = sys.argv[1]
mix = build_mix(safety_examples(20), instruction_examples(20, None), val_fraction=0)
t = time.perf_counter()
if which == "tiny":
    path = save_tiny("/tmp/tq", "LlamaForCausalLM", ".gpu/tokenizer", chat_template=False,
                     hidden_size=256, intermediate_size=512, num_attention_heads=4,
                     num_key_value_heads=4)
else:
    path = save_tiny("/tmp/q7b", "MistralForCausalLM", ".gpu/tokenizer", chat_template=False,
                     dtype=torch.bfloat16, device="cuda", **SEVEN_B["MistralForCausalLM"])
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
print(f"{which}: saved in {time.perf_counter() - t:.0f} s", flush=True)
cfg = TrainConfig(per_device_batch_size=8, gradient_accumulation_steps=1, max_steps=4,
                  max_length=512, save_steps=10_000, load_in_4bit=True,
                  extra={"disable_tqdm": True})
t = time.perf_counter()
res = train_lora(str(path), mix.train, [], f"/tmp/{which}-out", cfg, resume=False)
print(f"{which}: train_lora {time.perf_counter() - t:.0f} s, steps {res.global_step}, loss "
      f"{res.train_loss}, tokens {res.tokens_seen}, runtime {res.train_runtime_s:.1f} s")
resolved = json.loads(res.config_path.read_text())
print("resolved:", {k: v for k, v in resolved.items() if k != "config"})
print("adapter:", sorted(p.name for p in res.adapter_dir.iterdir()))
print(f"peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
if which == "tiny":
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16), device_map={"": 0})
    model = PeftModel.from_pretrained(base, str(res.adapter_dir))
    out = model.generate(torch.tensor([[1, 2, 3]], device="cuda"), max_new_tokens=4,
                         do_sample=False)
    print("reloaded on a 4-bit base, generated", out.tolist())
