#!/usr/bin/env bash
# Installs the Debian packages that are missing, in one apt transaction without recommends:
#   scripts/apt_install.sh PACKAGE...
# apt's output goes to the terminal and to a log ($MOELAB_APT_LOG, default
# ${TMPDIR:-/tmp}/moelab-apt.log). On failure one line names the packages and apt's cause (its
# first error, and what `apt-get update` could not fetch), not make's bare "Error 1".
set -uo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
log=${MOELAB_APT_LOG:-${TMPDIR:-/tmp}/moelab-apt.log}
mkdir -p "$(dirname "$log")"
echo "installing ${#missing[@]} Debian packages, one apt transaction without recommends: ${missing[*]}"
# apt-get update ends 0 when a mirror is unreachable (it warns and keeps old lists), so its
# warnings are kept for the message: the install's "Unable to locate package" is the symptom.
{ $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"; } 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] && exit 0
cause=$(grep -E '^E: ' "$log" | grep -v '^E: Can not write log' | head -1 | cut -c4-)
[ -n "$cause" ] || cause=$(grep -v '^ *$' "$log" | tail -1)
# "Unable to correct problems": the unmet dependencies apt listed say which
unmet=$(sed -n '/have unmet dependencies:$/,/^E: /{/^ /p}' "$log" | sed -E 's/^ +//; s/ +/ /g' | head -3 | paste -sd';' | sed 's/;/; /g')
[ -z "$unmet" ] || cause="$cause: $unmet"
fetch=$(grep -m1 -E '^W: Failed to fetch ' "$log" | sed -E 's/^W: Failed to fetch [^ ]+ +//')
[ -z "$fetch" ] || cause="$cause; apt-get update could not fetch the package lists: $fetch"
if [ ${#missing[@]} = 1 ]; then what="Debian package ${missing[0]}"; else what="Debian packages ${missing[*]}"; fi
echo "moelab setup: $what could not be installed: ${cause:-apt-get failed (exit $rc)} (apt's output: $log)" >&2
exit 1
