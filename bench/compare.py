"""`make bench`: moelab and the PyTorch peer alternately on the same configs and thread count,
several rounds, then medians and ratios against the targets, printed as tables and written whole
(every round's raw numbers, the peaks, the targets, the machine, the commit) as JSON.
Alternating within one command is what makes the numbers comparable on a host that throttles its
second core at times.

`compare.py --diff OLD.json NEW.json` prints new / old per config from two such files: the
regression (or the gain) between two commits."""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = 1


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def moelab(binary, config, threads, steps, *extra):
    return run([binary, "bench", "train", "--config", os.path.join(HERE, config), "--threads", str(threads),
                "--steps", str(steps), *extra])


def peer(config, threads, steps):
    return run([sys.executable, os.path.join(HERE, "torch_peer.py"), "--config", os.path.join(HERE, config),
                "--threads", str(threads), "--steps", str(steps)])


def peaks(binary, threads):
    return run([binary, "bench", "peak", "--threads", str(threads)])


def with_baseline(jobs, a):
    """Each moelab training job followed by the same job on the baseline binary, so that both see
    the same state of the machine; the peer runs and the peaks stay as they were."""
    out = {}
    for name, job in jobs.items():
        out[name] = job
        if "peer" in name or name == "peak":
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


# ----------------------------------------------------------------------------
# summary: medians, peaks and targets of the rounds (no process runs here: the unit test feeds it)

def median_of(rounds, key):
    """The median of `key` over the rounds that have a number there, or None."""
    xs = [r[key] for r in rounds if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return statistics.median(xs) if xs else None


def summarise_configs(res):
    configs = {}
    for name, rounds in res.items():
        if name == "peak":
            continue
        first = rounds[0]
        configs[name] = {
            "tokens_per_s": median_of(rounds, "tokens_per_s"),
            "mfu": median_of(rounds, "mfu"),
            "peak_precision": first.get("peak_precision", "fp32" if "mfu" in first else None),
            "peak_gflops": median_of(rounds, "peak_gflops"),
            "mfu_fp32_peak": median_of(rounds, "mfu_fp32_peak"),
            "peak_rss_mb": median_of(rounds, "peak_rss_mb"),
            "rss_estimate_mb": first.get("rss_estimate_mb"),
            "rounds": rounds,
        }
    return configs


def summarise_peaks(rounds):
    """Medians of the `bench peak` runs (one a round, on the run's thread count)."""
    if not rounds:
        return {"fp32_gflops": None, "bf16_gflops": None, "rounds": []}
    last = rounds[-1]
    return {
        "fp32_gflops": median_of(rounds, "fma_peak_gflops"),
        "bf16_gflops": median_of(rounds, "bf16_peak_gflops"),
        "fp32_isa": last.get("fp32_isa"),
        "bf16_isa": last.get("bf16_isa"),
        "amx_bf16": last.get("amx_bf16"),
        "rounds": rounds,
    }


def target(rows, what, value, text, goal, unit, at_least=True):
    """One row of the targets table; unit: "%" (a fraction shown as percent), "x" (a ratio) or ""
    (a plain number). A measure that could not be taken (None) is not met."""
    met = value is not None and (value >= goal if at_least else value <= goal)
    shown = {"%": f"{goal:.0%}", "x": f"{goal:.1f}x", "": f"{goal:.2f}"}[unit]
    rows.append({"target": what, "measured": value, "measured_text": text,
                 "goal": f"{'>=' if at_least else '<='} {shown}", "goal_value": goal,
                 "at_least": at_least, "met": met})


def fmt_pct(x):
    return "-" if x is None else f"{x:.1%}"


def ratio(a, b):
    return a / b if a is not None and b else None


def evaluate_targets(configs, threads):
    """Today's goals. MFUs are fp32, against the fp32 FMA peak at the run's thread count."""
    rows = []
    tok = {k: v["tokens_per_s"] for k, v in configs.items()}
    mfu = {k: v["mfu"] for k, v in configs.items()}
    for name, label, goal in (("dense", "dense MFU", 0.80), ("moe", "moe (E=8 top-2) MFU", 0.80),
                              ("dense512", "dense512 MFU", 0.85),
                              ("moe512", "moe512 (E=8 top-2, iso-total) MFU", 0.82),
                              ("moe512_e64", "moe512_e64 (E=64 top-2) MFU", 0.78)):
        if name in mfu:
            target(rows, label, mfu[name], fmt_pct(mfu[name]), goal, "%")
    for c in ("dense", "moe"):
        if c in tok and c + "/peer" in tok:
            r = ratio(tok[c], tok[c + "/peer"])
            target(rows, f"{c}: moelab / PyTorch tokens/s", r,
                   f"{tok[c]:.0f} / {tok[c + '/peer']:.0f} = {r:.2f}x", 2.0, "x")
    for c, goal in (("dense512", 1.8), ("moe512", 1.4)):
        if c in tok and c + "/bf16" in tok:
            r = ratio(tok[c + "/bf16"], tok[c])
            target(rows, f"{c}: bf16 / fp32 tokens/s", r, f"{r:.2f}x", goal, "x")
    for moe, dense, label, goal in (("moe512", "dense512_active_e8", "E=8", 0.85),
                                    ("moe512_e64", "dense512_active_e64", "E=64", 0.70)):
        if moe in tok and dense in tok:
            r = ratio(tok[moe], tok[dense])
            target(rows, f"{label} top-2 vs dense of equal active FLOPs", r, fmt_pct(r), goal, "%")
    if threads > 1 and "dense" in tok and "dense/1thread" in tok:
        # 90% of linear scaling (1.8x at 2 threads).
        r = ratio(tok["dense"], tok["dense/1thread"])
        target(rows, f"dense: 1 -> {threads} threads", r, f"{r:.2f}x", round(0.9 * threads, 2), "x")
    fits = [v["peak_rss_mb"] / v["rss_estimate_mb"] for v in configs.values()
            if v["rss_estimate_mb"] and v["peak_rss_mb"] is not None]
    if fits:
        worst = max(fits)
        target(rows, "peak RSS / (16 B x params + activations)", worst, f"{worst:.2f} (worst config)", 1.25, "",
               at_least=False)
    return rows


def baseline_ratios(configs):
    out = {}
    for k, v in configs.items():
        b = configs.get(k + "@baseline")
        if b and not k.endswith("@baseline"):
            out[k] = {"new": v["tokens_per_s"], "baseline": b["tokens_per_s"],
                      "ratio": ratio(v["tokens_per_s"], b["tokens_per_s"])}
    return out


def git_commit():
    def git(*args):
        return subprocess.run(["git", "-C", HERE, *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def machine_info():
    model, flags = None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    return {"cpu_model": model or platform.processor() or None, "flags": flags,
            "logical_cpus": os.cpu_count(), "kernel": platform.release(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def summarise(res, a, machine_start):
    configs = summarise_configs(res)
    commit, dirty = git_commit()
    machine = machine_start
    machine["loadavg_end"] = machine_info()["loadavg"]
    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "dirty": dirty,
        "moelab": os.path.abspath(a.moelab),
        "baseline": os.path.abspath(a.baseline) if a.baseline else None,
        "threads": a.threads,
        "rounds": a.rounds,
        "machine": machine,
        "peaks": summarise_peaks(res.get("peak", [])),
        "configs": configs,
        "targets": evaluate_targets(configs, a.threads),
        "baseline_ratios": baseline_ratios(configs) if a.baseline else None,
    }


# ----------------------------------------------------------------------------
# tables

def print_summary(s):
    p = s["peaks"]
    if p["bf16_gflops"]:
        bf16 = f"{p['bf16_gflops']:.0f}"
    elif any("bf16_peak_gflops" in r for r in p["rounds"]):
        bf16 = "none (no AVX512-BF16)"
    else:
        bf16 = "not measured"
    fp32 = f"{p['fp32_gflops']:.0f}" if p["fp32_gflops"] else "-"
    print(f"\nmedians of {s['rounds']} alternating rounds, {s['threads']} threads, commit "
          f"{(s['commit'] or 'unknown')[:12]}{' (modified)' if s['dirty'] else ''}; measured peaks: fp32 FMA "
          f"{fp32} GFLOP/s, bf16 dot product {bf16} GFLOP/s\n")
    print(f"| {'config':22s} | {'tokens/s':>9s} | {'MFU':>6s} | {'peak':>4s} | {'peak RSS MB':>11s} | "
          f"{'estimate MB':>11s} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 8}|{'-' * 6}|{'-' * 13}|{'-' * 13}|")
    for k, v in s["configs"].items():
        est = f"{v['rss_estimate_mb']:.0f}" if v["rss_estimate_mb"] else "-"
        prec = v["peak_precision"] or "-"
        rss = f"{v['peak_rss_mb']:.0f}" if v["peak_rss_mb"] is not None else "-"
        print(f"| {k:22s} | {v['tokens_per_s']:9.0f} | {fmt_pct(v['mfu']):>6s} | {prec:>4s} | {rss:>11s} | "
              f"{est:>11s} |")
    print(f"\n| {'target':45s} | {'measured':30s} | {'goal':8s} | met |")
    print(f"|{'-' * 47}|{'-' * 32}|{'-' * 10}|-----|")
    for r in s["targets"]:
        print(f"| {r['target']:45s} | {r['measured_text']:30s} | {r['goal']:8s} | {'yes' if r['met'] else 'NO':3s} |")
    if s["baseline_ratios"]:
        print(f"\n| {'config':22s} | {'new tok/s':>9s} | {'baseline':>9s} | {'new/base':>8s} | within 3% |")
        print(f"|{'-' * 24}|{'-' * 11}|{'-' * 11}|{'-' * 10}|-----------|")
        for k, b in s["baseline_ratios"].items():
            print(f"| {k:22s} | {b['new']:9.0f} | {b['baseline']:9.0f} | {b['ratio']:8.3f} | "
                  f"{'yes' if b['ratio'] >= 0.97 else 'NO':9s} |")


# ----------------------------------------------------------------------------
# --diff OLD NEW

def load_results(path):
    try:
        with open(path) as f:
            s = json.load(f)
    except OSError as e:
        sys.exit(f"{path}: cannot read ({e.strerror})")
    except json.JSONDecodeError as e:
        sys.exit(f"{path}: invalid JSON ({e})")
    if not isinstance(s, dict) or not isinstance(s.get("configs"), dict):
        sys.exit(f"{path}: not a compare.py results file (no \"configs\" object)")
    return s


def diff_rows(old, new, tolerance):
    """Per config in both files: tokens/s old, new and new/old, MFU old and new, and whether new
    is within `tolerance` of old; then the peaks, whose ratio says whether the machine changed."""
    rows = []
    for k, n in new["configs"].items():
        o = old["configs"].get(k)
        if not o or not o.get("tokens_per_s") or n.get("tokens_per_s") is None:
            continue
        r = n["tokens_per_s"] / o["tokens_per_s"]
        rows.append({"config": k, "old": o["tokens_per_s"], "new": n["tokens_per_s"], "ratio": r,
                     "old_mfu": o.get("mfu"), "new_mfu": n.get("mfu"), "within": r >= 1 - tolerance})
    for key in ("fp32_gflops", "bf16_gflops"):
        o, n = (old.get("peaks") or {}).get(key), (new.get("peaks") or {}).get(key)
        if o and n:
            rows.append({"config": f"peak {key.split('_')[0]}", "old": o, "new": n, "ratio": n / o,
                         "old_mfu": None, "new_mfu": None, "within": n / o >= 1 - tolerance})
    return rows


def print_diff(old, new, rows, tolerance):
    def describe(s):
        return f"{(s.get('commit') or 'unknown')[:12]}, {s.get('threads')} threads, {s.get('date') or '?'}"
    print(f"old: {describe(old)}\nnew: {describe(new)}")
    om, nm = (old.get("machine") or {}).get("cpu_model"), (new.get("machine") or {}).get("cpu_model")
    if om != nm or old.get("threads") != new.get("threads"):
        print("warning: the two runs differ in CPU or thread count; the ratios compare machines, not commits")
    print(f"\n| {'config':22s} | {'old':>9s} | {'new':>9s} | {'new/old':>7s} | {'old MFU':>7s} | {'new MFU':>7s} | "
          f"within {tolerance:.0%} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 11}|")
    for r in rows:
        print(f"| {r['config']:22s} | {r['old']:9.0f} | {r['new']:9.0f} | {r['ratio']:7.3f} | "
              f"{fmt_pct(r['old_mfu']):>7s} | {fmt_pct(r['new_mfu']):>7s} | {'yes' if r['within'] else 'NO':9s} |")
    old_t = {t["target"]: t["met"] for t in old.get("targets") or []}
    changed = [(t["target"], old_t[t["target"]], t["met"]) for t in new.get("targets") or []
               if t["target"] in old_t and old_t[t["target"]] != t["met"]]
    for what, was, now in changed:
        print(f"target {what}: {'met' if was else 'not met'} -> {'met' if now else 'not met'}")


# ----------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moelab", help="the moelab binary to measure")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", help="a previous moelab binary: each moelab config also runs on it, right after "
                    "the new one, and a last table gives new / baseline tokens/s")
    ap.add_argument("--json", help="where to write the results (default: bench-results.json next to --moelab)")
    ap.add_argument("--diff", nargs=2, metavar=("OLD", "NEW"),
                    help="print new / old per config of two results files instead of measuring")
    ap.add_argument("--tolerance", type=float, default=0.03, help="--diff: the slowdown still counted as within "
                    "noise (default 0.03)")
    ap.add_argument("--check", action="store_true", help="--diff: exit 1 when a config is slower than the tolerance")
    a = ap.parse_args()
    if a.diff:
        old, new = load_results(a.diff[0]), load_results(a.diff[1])
        rows = diff_rows(old, new, a.tolerance)
        print_diff(old, new, rows, a.tolerance)
        return 1 if a.check and not all(r["within"] for r in rows) else 0
    if not a.moelab:
        ap.error("--moelab is required (or --diff OLD NEW)")
    if a.rounds < 1 or a.threads < 1:
        ap.error("--rounds and --threads must be >= 1")
    out_path = a.json or os.path.join(os.path.dirname(os.path.abspath(a.moelab)), "bench-results.json")
    T = a.threads
    jobs = {  # name -> function
        "peak": lambda: peaks(a.moelab, T),
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
    machine = machine_info()
    machine["loadavg_start"] = machine.pop("loadavg")
    res = {k: [] for k in jobs}
    for r in range(a.rounds):
        for name, job in jobs.items():
            res[name].append(job())
            x = res[name][-1]
            shown = (f"{x['tokens_per_s']:>9.1f} tokens/s" if "tokens_per_s" in x else
                     f"peaks fp32 {x.get('fma_peak_gflops')} bf16 {x.get('bf16_peak_gflops')} GFLOP/s")
            print(f"round {r + 1}/{a.rounds} {name:22s} {shown}", file=sys.stderr, flush=True)
    s = summarise(res, a, machine)
    print_summary(s)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(s, f, indent=1)
        f.write("\n")
    os.replace(tmp, out_path)
    print(f"\nresults: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
