#!/bin/bash
# Device checks for issue 11 (7B decode on one GPU) and the training path on CUDA.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu/site:$PWD TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee $OUT/env.txt
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" 2>&1 | tee -a $OUT/env.txt
B=1,8,32,64,128,256
echo "== A1 mistral"; timeout 140 python3 benchmarks/bench_gpu_decode.py --arch MistralForCausalLM --batches $B --out $OUT/decode_mistral.json 2>&1 | grep -v Warning | tee $OUT/decode_mistral.log | tail -25
echo "== A2 llama"; timeout 120 python3 benchmarks/bench_gpu_decode.py --arch LlamaForCausalLM --batches $B --out $OUT/decode_llama.json 2>&1 | grep -v Warning | tee $OUT/decode_llama.log | tail -12
echo "== B1 tiny training on CUDA"
( timeout 70 python3 -c "
from testing.tiny_models import save_tiny
save_tiny('/tmp/tiny', 'LlamaForCausalLM', '.gpu/tokenizer', chat_template=False, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=2)
" && timeout 70 python3 benchmarks/bench_training.py --model /tmp/tiny --steps 3 --batch 4 ) 2>&1 | tee $OUT/train_tiny.log | tail -8
echo "== B2 7B mistral LoRA training"
( timeout 80 python3 -c "
import time, torch
from testing.tiny_models import SEVEN_B, save_tiny
t = time.perf_counter()
save_tiny('/tmp/m7b', 'MistralForCausalLM', '.gpu/tokenizer', chat_template=False, dtype=torch.bfloat16, device='cuda', **SEVEN_B['MistralForCausalLM'])
print(f'saved a random 7B Mistral in {time.perf_counter() - t:.0f} s')
" && timeout 150 python3 benchmarks/bench_training.py --model /tmp/m7b --steps 4 --batch 8 ) 2>&1 | tee $OUT/train_7b.log | tail -10
