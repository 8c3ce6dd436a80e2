#!/usr/bin/env bash
# Builds llama.cpp's `llama-quantize` and `llama-perplexity` from the source distribution of
# llama-cpp-python on PyPI (it vendors the whole llama.cpp tree) into a cache folder outside the repository.
# Usage: build_llama_cpp.sh CACHE_DIR PYTHON_VENV   (about 12 min on 2 cores; needs gcc, g++ and make)
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
  # The simple index gives the sdist's address with its sha256; the download is checked against it.
  "$VENV/bin/python" - "$VERSION" "$CACHE" <<'PY'
import hashlib, re, sys, tarfile, urllib.parse, urllib.request
version, cache = sys.argv[1], sys.argv[2]
index = "https://pypi.org/simple/llama-cpp-python/"
page = urllib.request.urlopen(index).read().decode()
name = f"llama_cpp_python-{version}.tar.gz"
href = next(h for h in re.findall(r'href="([^"]+)"', page) if name in h)
url, _, fragment = urllib.parse.urljoin(index, href).partition("#sha256=")
data = urllib.request.urlopen(url).read()
if hashlib.sha256(data).hexdigest() != fragment:
    sys.exit(f"{name}: sha256 differs from the index")
path = f"{cache}/{name}"
open(path, "wb").write(data)
with tarfile.open(path) as archive:
    archive.extractall(cache, filter="data")
PY
  rm "$CACHE/llama_cpp_python-$VERSION.tar.gz"
fi
"$VENV/bin/pip" install -q cmake
trap 'echo "llama.cpp build failed; the end of $CACHE/build.log:" >&2; tail -n 30 "$CACHE/build.log" >&2' ERR
"$VENV/bin/cmake" -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON > "$CACHE/build.log" 2>&1
"$VENV/bin/cmake" --build "$BUILD" -j "$(nproc)" --target llama-quantize llama-perplexity llama-gguf-split >> "$CACHE/build.log" 2>&1
echo "$BIN"
