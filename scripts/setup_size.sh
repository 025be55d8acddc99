#!/usr/bin/env bash
# What `make deps` downloads on a minimal Debian 12, measured with apt's own resolver and the
# package lists of this machine (no root, nothing installed, nothing downloaded):
#   scripts/setup_size.sh [PACKAGE...]     default: the Makefile's DEPS + nodejs npm
# The minimal system is debootstrap's minbase (every Priority: required package and apt, without
# recommends) plus `apt-get install git make ca-certificates`; its dpkg status is written to a
# scratch file that apt reads instead of this machine's. Prints, with and without recommends,
# the number of packages, the download size and the installed size. Needs `apt-get update` done.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  set -- $(make -s -f Makefile -f - print-deps <<<'print-deps: ; @echo $(DEPS) nodejs npm')
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/archives/partial" "$work/lists/partial"
: >"$work/status"
# apt against the scratch status; archives empty so that every package counts as a download
apt_() {
  apt-get -o Dir::State::status="$work/status" -o Dir::State::extended_states="$work/ext" \
    -o Dir::Cache::archives="$work/archives/" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
    -o Debug::NoLocking=1 "$@"
}
# "Inst NAME (VERSION ...)" of a simulated install -> NAME=VERSION
plan() { apt_ -s install -y "$@" | sed -nE 's/^Inst ([^ ]+) \(([^ ]+) .*/\1=\2/p'; }
# Marks NAME=VERSION... installed in the scratch status: apt-cache's stanza + a Status field
mark_installed() {
  [ $# -gt 0 ] || return 0
  apt-cache show "$@" | awk -v RS= -v ORS='\n\n' '
    { split($0, l, "\n"); name = substr(l[1], 10) }
    !seen[name]++ { sub(/\n/, "\nStatus: install ok installed\n"); print }' >>"$work/status"
}
lists=$(ls /var/lib/apt/lists/*_Packages* 2>/dev/null | grep -v '\.diff' || true)
[ -n "$lists" ] || { echo "setup_size: no apt package lists (run apt-get update first)" >&2; exit 1; }
required=$(for f in $lists; do /usr/lib/apt/apt-helper cat-file "$f"; done |
  awk '/^Package:/ { p = $2 } /^Priority: required/ { print p }' | sort -u)
mark_installed $(plan --no-install-recommends $required apt)
mark_installed $(plan git make ca-certificates)
base=$(grep -c '^Status: install ok installed' "$work/status")

measure() {  # label, apt options...; prints packages, download MB, installed MB
  local label=$1
  shift
  local pkgs
  pkgs=$(plan "$@")
  local n
  n=$(printf '%s\n' $pkgs | grep -c . || true)
  local dl
  dl=$(apt_ install -y --print-uris -qq "$@" | awk '{ s += $3 } END { printf "%.0f", s / 1e6 }')
  local inst
  inst=$(apt-cache show $pkgs 2>/dev/null | awk -v RS= '
    { split($0, l, "\n"); name = substr(l[1], 10) }
    !seen[name]++ && match($0, /\nInstalled-Size: [0-9]+/) {
      s += substr($0, RSTART + 17, RLENGTH - 17) }
    END { printf "%.0f", s * 1024 / 1e6 }')
  printf '%-20s %4d packages, %4d MB download, %5d MB installed\n' "$label" "$n" "$dl" "$inst"
}
echo "minimal Debian $(cat /etc/debian_version) (minbase + git make ca-certificates): $base packages"
echo "make deps installs $*"
measure "with recommends" "$@"
measure "--no-install-recommends" --no-install-recommends "$@"
