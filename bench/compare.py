"""`make bench`: moelab and the PyTorch peer alternately on the same configs and thread count,
several rounds, then medians and ratios against the targets. Alternating within one command is
what makes the numbers comparable on a host that throttles its second core at times."""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def moelab(binary, config, threads, steps, *extra):
    return run([binary, "bench", "train", "--config", os.path.join(HERE, config), "--threads", str(threads),
                "--steps", str(steps), *extra])


def peer(config, threads, steps):
    return run([sys.executable, os.path.join(HERE, "torch_peer.py"), "--config", os.path.join(HERE, config),
                "--threads", str(threads), "--steps", str(steps)])


def with_baseline(jobs, a):
    """Each moelab job followed by the same job on the baseline binary, so that both see the same
    state of the machine; the peer runs stay as they were."""
    out = {}
    for name, job in jobs.items():
        out[name] = job
        if "peer" in name:
            continue
        out[name + "@baseline"] = baseline_job(job, a)
    return out


def baseline_job(job, a):
    def run_on_baseline():
        new = a.moelab
        a.moelab = a.baseline
        try:
            return job()
        finally:
            a.moelab = new
    return run_on_baseline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moelab", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", help="a previous moelab binary: each moelab config also runs on it, right after "
                    "the new one, and a last table gives new / baseline tokens/s")
    a = ap.parse_args()
    T = a.threads
    jobs = {  # name -> (function, args)
        "dense": lambda: moelab(a.moelab, "dense.json", T, 10),
        "dense/peer": lambda: peer("dense.json", T, 5),
        "moe": lambda: moelab(a.moelab, "moe.json", T, 10),
        "moe/peer": lambda: peer("moe.json", T, 5),
        "dense/1thread": lambda: moelab(a.moelab, "dense.json", 1, 5),
        "dense512": lambda: moelab(a.moelab, "dense512.json", T, 4),
        "dense512/bf16": lambda: moelab(a.moelab, "dense512.json", T, 4, "--bf16"),
        "moe512": lambda: moelab(a.moelab, "moe512.json", T, 4),
        "moe512/bf16": lambda: moelab(a.moelab, "moe512.json", T, 4, "--bf16"),
        "dense512_active_e8": lambda: moelab(a.moelab, "dense512_active_e8.json", T, 4),
        "moe512_e64": lambda: moelab(a.moelab, "moe512_e64.json", T, 4),
        "dense512_active_e64": lambda: moelab(a.moelab, "dense512_active_e64.json", T, 4),
    }
    if a.baseline:
        jobs = with_baseline(jobs, a)
    res = {k: [] for k in jobs}
    for r in range(a.rounds):
        for name, job in jobs.items():
            res[name].append(job())
            print(f"round {r + 1}/{a.rounds} {name:22s} {res[name][-1]['tokens_per_s']:>9.1f} tokens/s",
                  file=sys.stderr, flush=True)
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in res.items()}
    mfu = {k: statistics.median(x["mfu"] for x in v) for k, v in res.items() if "mfu" in v[0]}
    peak = statistics.median(x["peak_gflops"] for v in res.values() for x in v if "peak_gflops" in x)
    rss = {k: (statistics.median(x["peak_rss_mb"] for x in v), v[0].get("rss_estimate_mb")) for k, v in res.items()}

    rows = []

    def row(what, value, target, ok):
        rows.append((what, value, target, "yes" if ok else "NO"))

    for c in ("dense", "moe"):
        ratio = med[c] / med[c + "/peer"]
        row(f"{c}: moelab / PyTorch tokens/s", f"{med[c]:.0f} / {med[c + '/peer']:.0f} = {ratio:.2f}x", ">= 3.0x",
            ratio >= 3.0)
    row("dense512 MFU", f"{mfu['dense512']:.1%}", ">= 45%", mfu["dense512"] >= 0.45)
    row("moe512 (E=8 top-2, iso-total) MFU", f"{mfu['moe512']:.1%}", ">= 35%", mfu["moe512"] >= 0.35)
    e8 = med["moe512"] / med["dense512_active_e8"]
    row("E=8 top-2 vs dense of equal active FLOPs", f"{e8:.1%}", ">= 85%", e8 >= 0.85)
    e64 = med["moe512_e64"] / med["dense512_active_e64"]
    row("E=64 top-2 vs dense of equal active FLOPs", f"{e64:.1%}", ">= 70%", e64 >= 0.70)
    for c in ("dense512", "moe512"):
        bf = med[c + "/bf16"] / med[c]
        row(f"{c}: bf16 / fp32 tokens/s", f"{bf:.2f}x", ">= 1.4x", bf >= 1.4)
    sc = med["dense"] / med["dense/1thread"]
    row("dense: 1 -> 2 threads", f"{sc:.2f}x", ">= 1.8x", sc >= 1.8)
    worst = max(rss[k][0] / rss[k][1] for k in res if rss[k][1])
    row("peak RSS / (16 B x params + activations)", f"{worst:.2f} (worst config)", "<= 1.25", worst <= 1.25)

    print(f"\nmedians of {a.rounds} alternating rounds, {T} threads, measured FMA peak {peak:.0f} GFLOP/s\n")
    print(f"| {'config':22s} | {'tokens/s':>9s} | {'MFU':>6s} | {'peak RSS MB':>11s} | {'estimate MB':>11s} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 8}|{'-' * 13}|{'-' * 13}|")
    for k in res:
        m = f"{mfu[k]:.1%}" if k in mfu else "-"
        est = f"{rss[k][1]:.0f}" if rss[k][1] else "-"
        print(f"| {k:22s} | {med[k]:9.0f} | {m:>6s} | {rss[k][0]:11.0f} | {est:>11s} |")
    print(f"\n| {'target':45s} | {'measured':30s} | {'goal':8s} | met |")
    print(f"|{'-' * 47}|{'-' * 32}|{'-' * 10}|-----|")
    for r in rows:
        print(f"| {r[0]:45s} | {r[1]:30s} | {r[2]:8s} | {r[3]:3s} |")
    if a.baseline:
        print(f"\n| {'config':22s} | {'new tok/s':>9s} | {'baseline':>9s} | {'new/base':>8s} | within 3% |")
        print(f"|{'-' * 24}|{'-' * 11}|{'-' * 11}|{'-' * 10}|-----------|")
        for k in res:
            if k.endswith("@baseline"):
                continue
            b = k + "@baseline"
            if b in res:
                ratio = med[k] / med[b]
                print(f"| {k:22s} | {med[k]:9.0f} | {med[b]:9.0f} | {ratio:8.3f} | {'yes' if ratio >= 0.97 else 'NO':9s} |")


if __name__ == "__main__":
    main()
