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
(cd "$tmp" && npm pack --silent "$spec" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
mv "$tmp/package" "$dest"
echo "fetched $spec into $dest"
