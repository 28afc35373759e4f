export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD
python3 -c "import bitsandbytes as b; print('bitsandbytes', b.__version__)" 2>&1 | tail -2
timeout 80 python3 .gpu/qlora.py tiny 2>&1 | grep -v -i "warn" | tee $OUT/qlora_tiny.log | tail -9
timeout 150 python3 .gpu/qlora.py 7b 2>&1 | grep -v -i "warn" | tee $OUT/qlora_7b.log | tail -7
