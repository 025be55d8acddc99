#!/usr/bin/env python3
"""Per-request time of `moelab serve` over one kept-alive connection.

Starts one server per --moelab binary (all at once, each on a free port), then in each round and
for each server in turn sends --requests requests of each kind over one http.client connection
(the way lm-evaluation-harness's remote tokenizer reuses a requests.Session), timing each from
the request's first byte to the answer's last. Prints the median and the 90th percentile per
server and kind; with --bound-ms, fails (exit 1) when a server's median of /tokenize or of the
one-token completion is not below it.

  python3 tests/e2e/serve_latency.py --moelab OLD --moelab NEW --checkpoint CK --data DATA
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time

KINDS = {
    "tokenize": ("/tokenize", {"prompt": "Verse 3 of chapter 7: and the king", "add_special_tokens": False}),
    "completion": ("/v1/completions", {"prompt": "Verse 3 of chapter", "max_tokens": 1,
                                       "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234}),
}


def start(moelab, checkpoint, data, threads):
    # idle OpenMP threads sleep: the server not being timed leaves the cores to the one that is
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    p = subprocess.Popen([moelab, "serve", checkpoint, "--data", data, "--port", "0", "--slots", "2",
                          "--threads", str(threads), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        p.kill()
        sys.exit(f"FAIL: {moelab} serve did not start: {line.strip()}")
    return p, int(m.group(1))


def run_kind(port, path, body, n):
    """n timed requests, each on a connection that has already served one (the server closes a
    connection after 100 requests, --keep-alive's count: the request that opens the next one is
    sent untimed)."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    times = []
    conn, fresh = None, True
    while len(times) < n:
        if conn is None:
            conn, fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=30), True
        t0 = time.perf_counter()
        conn.request("POST", path, data, headers)
        r = conn.getresponse()
        payload = r.read()
        dt = time.perf_counter() - t0
        if r.status != 200:
            sys.exit(f"FAIL: {path}: status {r.status}: {payload[:200]!r}")
        if not fresh:
            times.append(dt * 1e3)
        fresh = False
        if r.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return times


def p90(xs):
    return sorted(xs)[min(len(xs) - 1, int(0.9 * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moelab", action="append", required=True, help="binary (repeat to compare)")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--requests", type=int, default=200, help="per kind, per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bound-ms", type=float, default=0, help="fail when a median is not below")
    a = ap.parse_args()
    servers = [start(m, a.checkpoint, a.data, a.threads) for m in a.moelab]
    times = {(i, k): [] for i in range(len(servers)) for k in KINDS}
    try:
        for _ in range(a.rounds):  # the servers alternate within each round
            for i, (_, port) in enumerate(servers):
                for k, (path, body) in KINDS.items():
                    times[(i, k)] += run_kind(port, path, body, a.requests)
    finally:
        for p, _ in servers:
            p.terminate()
            p.wait(timeout=30)
    failed = False
    for i, m in enumerate(a.moelab):
        for k in KINDS:
            xs = times[(i, k)]
            med = statistics.median(xs)
            print(f"{m}  {k:10s}  {len(xs)} requests on kept-alive connections: "
                  f"median {med:.3f} ms, p90 {p90(xs):.3f} ms")
            if a.bound_ms > 0 and not med < a.bound_ms:
                print(f"FAIL: {m} {k}: median {med:.3f} ms, not below {a.bound_ms} ms")
                failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
