#!/usr/bin/env bash
# Installs node-llama-cpp (pinned) with its prebuilt CPU llama.cpp for linux-x64 only into the
# moelab cache (never into the repository), for tests/e2e/gguf_test.sh and bench/gguf_speed.sh:
#   scripts/fetch_node_llama_cpp.sh   ->   $MOELAB_CACHE/npm/node-llama-cpp@VERSION/node_modules/
# --omit=optional leaves out the CUDA, Vulkan and other platforms' builds (about 700 MB); the
# linux-x64 package (the CPU build, ~29 MB) is named explicitly. --ignore-scripts: npm never runs
# node-llama-cpp's postinstall, which could download or build llama.cpp. The folder appears under
# its final name only once complete; already there: nothing to do.
set -euo pipefail
version=3.21.1
cache=${MOELAB_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/moelab}
dest="$cache/npm/node-llama-cpp@$version"
[ -d "$dest/node_modules/@node-llama-cpp/linux-x64" ] && exit 0
mkdir -p "$cache/npm"
tmp=$(mktemp -d "$cache/npm/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo '{"name": "moelab-node-llama-cpp", "private": true}' >"$tmp/package.json"
if ! (cd "$tmp" && npm install --loglevel=error --save-exact --omit=optional --ignore-scripts \
  --no-audit --no-fund "node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version" \
  >/dev/null 2>"$tmp/npm.err"); then
  cause=$(sed -nE 's/^npm (ERR!|error) ?//p' "$tmp/npm.err" |
    grep -vE '^(code|errno|syscall|A complete log|Log files)|^ *$' | head -1 || true)
  [ -n "$cause" ] || cause=$(grep -v '^ *$' "$tmp/npm.err" | tail -1 || true)
  echo "moelab setup: node-llama-cpp@$version could not be installed: ${cause:-npm failed} (npm needs the registry, $(npm config get registry 2>/dev/null || echo 'https://registry.npmjs.org/'), reachable; the prebuilt llama.cpp is for linux-x64)" >&2
  exit 1
fi
chmod 755 "$tmp"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "installed node-llama-cpp@$version (CPU, linux-x64) into $dest ($(du -sh "$dest" | cut -f1))"
