#!/bin/sh
# Builds llama-cpp-python from source into .venv for `bench/decode.py --llama-cpp` (the llama.cpp
# baseline); not part of `make test`. Native flags (AVX-512 / VNNI where the CPU has them), no
# multimodal library, no examples or tests. ~15 minutes on 2 quiet cores; on a machine busy with
# other work it takes far longer (JOBS=1 halves its share of the CPU).
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -m pip install --quiet cmake ninja
export CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2}
PATH="$(dirname "$PY"):$PATH" $PY -m pip install --no-binary llama-cpp-python --no-cache-dir \
    "llama-cpp-python==0.3.36"
$PY -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'ready')"
