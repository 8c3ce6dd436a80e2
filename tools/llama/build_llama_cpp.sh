#!/usr/bin/env bash
# Builds llama.cpp's `llama-quantize`, `llama-perplexity` and `llama-cli`-free tools from the source distribution of
# llama-cpp-python on PyPI (it vendors the whole llama.cpp tree) into a cache folder outside the repository.
# Usage: build_llama_cpp.sh CACHE_DIR PYTHON_VENV
# Prints the folder holding the binaries on its last line. Re-running with a finished build only prints it.
set -euo pipefail
CACHE=${1:?cache folder}
VENV=${2:?python venv (cmake is installed into it)}
VERSION=0.3.36
SRC="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD="$CACHE/build-$VERSION"
BIN="$BUILD/bin"
if [[ -x "$BIN/llama-quantize" && -x "$BIN/llama-perplexity" ]]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$CACHE"
if [[ ! -d "$SRC" ]]; then
  url=$("$VENV/bin/python" - "$VERSION" <<'PY'
import json, sys, urllib.request
version = sys.argv[1]
meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/llama-cpp-python/{version}/json"))
print(next(u["url"] for u in meta["urls"] if u["packagetype"] == "sdist"))
PY
)
  case "$url" in http*) ;; *) url="https://files.pythonhosted.org/${url#../../}" ;; esac
  curl -sSfL -o "$CACHE/sdist.tar.gz" "$url"
  tar xzf "$CACHE/sdist.tar.gz" -C "$CACHE"
  rm "$CACHE/sdist.tar.gz"
fi
"$VENV/bin/pip" install -q cmake
"$VENV/bin/cmake" -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON > "$CACHE/build.log" 2>&1
"$VENV/bin/cmake" --build "$BUILD" -j "$(nproc)" --target llama-quantize llama-perplexity llama-gguf-split >> "$CACHE/build.log" 2>&1
echo "$BIN"
