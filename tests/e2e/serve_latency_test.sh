#!/usr/bin/env bash
# moelab serve answers each request of a kept-alive connection at once: the median time per
# request over reused connections, for /tokenize and for a one-token scored completion (the two
# requests lm-evaluation-harness sends most), is below 5 ms. Without TCP_NODELAY and with an
# answer's headers and body in two writes, each took about 40 ms (Nagle's algorithm meeting the
# client's delayed ACK).
set -u
moelab=$1
here=$(cd "$(dirname "$0")" && pwd)
source "$here/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=1

verses_data "$moelab" 30 10 320 13
tiny_lm "$moelab" 64
python3 "$here/serve_latency.py" --moelab "$moelab" --checkpoint run/step_00000020 \
  --data data --requests 100 --rounds 1 --bound-ms 5 >lat.log 2>&1 && ok || bad "latency: $(cat lat.log)"
cat lat.log
finish serve_latency
