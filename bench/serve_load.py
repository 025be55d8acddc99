#!/usr/bin/env python3
"""A bounded load test of `moelab serve` on loopback, with every answer checked.

Phases (--phases, comma-separated):
  load      A deterministic mix of requests (lm-eval style log-likelihood scoring, greedy
            generation with stop strings, batched prompts, n=2 seeded sampling, SSE streams).
            Every distinct request is first answered SEQUENTIALLY (one client, one request at a
            time); then C clients send R requests concurrently and each answer is compared with
            the sequential one: generated text identical, scoring log-probabilities within 1e-4,
            streamed text == whole text, one answer per request, response ids unique, the
            server's /health counters grown by exactly what the answers report.
  overload  A second server with a small queue gets a burst: the refusals must be 503 with a
            JSON error body, the accepted answers correct, and the server healthy after.
  sigterm   A third server gets SIGTERM while requests run: it must exit 0, the running
            requests complete (and correct), the waiting ones a JSON 503.
  eval      (with --evalset) every sample of a `moelab entities build` set scored the way
            lm-eval scores (echo + logprobs) by C clients, against `moelab eval` on the same
            model: time, prompt tokens/s, and PPL_ent / M(f) recomputed from the server's numbers.

Python standard library only. Prints a table; --out writes the whole summary as JSON. The exit
status is 1 when any check failed.

  python3 bench/serve_load.py --moelab build/moelab --checkpoint runs/default/E1_s1/step_00001221 \
      --data data/default --clients 64 --requests 2000 --out load.json
"""
import argparse
import array
import http.client
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

# ----------------------------------------------------------------------------
# HTTP


class Client:
    """One keep-alive connection. post() returns (status, body bytes, seconds, retried)."""

    def __init__(self, url, timeout=600):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.conn = None
        self.used = 0

    def _open(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.used = 0

    def request(self, method, path, body=None):
        retried = False
        for attempt in (0, 1):
            if self.conn is None:
                self._open()
            reused = self.used > 0
            t0 = time.perf_counter()
            try:
                data = None if body is None else json.dumps(body).encode()
                headers = {"Content-Type": "application/json"} if data else {}
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                self.used += 1
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, raw, time.perf_counter() - t0, retried, r.getheader("Content-Type", "")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a keep-alive connection the server had closed (idle timeout): once more on a
                # new one. A request the server did take twice shows in the /health counters.
                self.close()
                if attempt == 1 or not reused:
                    raise
                retried = True

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def get_json(self, path):
        st, raw, _, _, _ = self.request("GET", path)
        if st != 200:
            raise RuntimeError(f"GET {path}: HTTP {st}: {raw[:200]!r}")
        return json.loads(raw)

    def post_json(self, path, body):
        st, raw, _, _, _ = self.request("POST", path, body)
        if st != 200:
            raise RuntimeError(f"POST {path}: HTTP {st}: {raw[:200]!r}")
        return json.loads(raw)


def parse_sse(raw):
    """SSE body -> (list of JSON events, saw [DONE], problems)."""
    events, done, problems = [], False, []
    for block in raw.decode("utf-8", "replace").split("\n\n"):
        if not block.strip():
            continue
        if not block.startswith("data: "):
            problems.append(f"not a data line: {block[:80]!r}")
            continue
        payload = block[len("data: "):]
        if payload == "[DONE]":
            if done:
                problems.append("two [DONE]")
            done = True
            continue
        if done:
            problems.append("an event after [DONE]")
        try:
            events.append(json.loads(payload))
        except ValueError:
            problems.append(f"bad JSON event: {payload[:80]!r}")
    return events, done, problems


# ----------------------------------------------------------------------------
# the server


class Server:
    """`moelab serve` on a free port; stderr to a log file."""

    def __init__(self, moelab, checkpoint, data, slots, queue, threads, extra=()):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve_load_", suffix=".log", delete=False)
        cmd = [moelab, "serve", checkpoint, "--data", data, "--port", "0", "--slots", str(slots),
               "--queue", str(queue), "--quiet"] + (["--threads", str(threads)] if threads else []) + list(extra)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        deadline = time.time() + 120
        while True:
            text = open(self.log.name).read()
            m = re.search(r"on (http://[\d.]+:\d+)", text)
            if m:
                self.url = m.group(1)
                break
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"moelab serve did not start: {text.strip()[-300:]}")
            time.sleep(0.05)

    def stop(self, timeout=60):
        """SIGTERM; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def log_text(self):
        return open(self.log.name).read()

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


# ----------------------------------------------------------------------------
# prompts: windows of real text from the data folder's token shards


def read_shards(data_dir, limit=2_000_000):
    """Token ids of the data folder's shards (64-byte header, then little-endian ids)."""
    names = sorted(f for f in os.listdir(data_dir) if f.endswith(".tok"))
    out = []
    for name in names:
        with open(os.path.join(data_dir, name), "rb") as f:
            head = f.read(64)
            if head[:8] != b"MLTOKENS":
                raise RuntimeError(f"{name}: not a token shard")
            width = int.from_bytes(head[12:16], "little")
            n = int.from_bytes(head[32:40], "little")
            a = array.array("H" if width == 2 else "I")
            a.frombytes(f.read(min(n, limit) * width))
            if sys.byteorder != "little":
                a.byteswap()
            out.append(a)
    if not out:
        raise RuntimeError(f"{data_dir}: no .tok shards")
    return out


class Prompts:
    def __init__(self, shards, eot, rng):
        self.shards, self.eot, self.rng = shards, eot, rng

    def ids(self, n):
        """n consecutive ids from one shard, without an end-of-text id."""
        for _ in range(1000):
            a = self.rng.choice(self.shards)
            if len(a) <= n:
                continue
            at = self.rng.randrange(0, len(a) - n)
            w = list(a[at:at + n])
            if self.eot not in w:
                return w
        raise RuntimeError(f"no window of {n} tokens without end-of-text")


# ----------------------------------------------------------------------------
# the request mix


def build_pool(prompts, detok, distinct, max_len, rng, gen_tokens, mix=(0.5, 0.4, 0.1)):
    """Distinct requests: dicts {kind, body}. Texts come from /detokenize of real windows."""
    stops = [["\n"], [".", "\n"], ["\n\n", "</s>"], [], [" the"], ["Question:"]]
    pool = []
    lo, hi = 8, max(9, min(160, max_len - gen_tokens - 1))
    w = [x / sum(mix) for x in mix]
    for i in range(distinct):
        u = rng.random()
        if u < w[0]:  # lm-eval loglikelihood, tokenized_requests=True, batch_size=1
            n = rng.randint(lo, min(hi + gen_tokens, max_len - 1))
            body = {"model": "moelab", "prompt": [prompts.ids(n)], "max_tokens": 1,
                    "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234}
            kind = "score"
        elif u < w[0] + w[1]:  # lm-eval generate_until: ids or text, greedy, stop strings
            n = rng.randint(lo, hi)
            ids = prompts.ids(n)
            prompt = [ids] if rng.random() < 0.5 else detok(ids)
            body = {"model": "moelab", "prompt": prompt, "max_tokens": gen_tokens,
                    "temperature": 0, "stop": rng.choice(stops), "seed": 1234}
            kind = "gen"
        else:
            k = rng.randrange(3)
            if k == 0:  # a batch of prompts of different lengths in one POST (lm-eval batch_size 4)
                ps = [prompts.ids(rng.randint(lo, hi)) for _ in range(rng.randint(2, 4))]
                if rng.random() < 0.5:
                    body = {"prompt": ps, "max_tokens": 1, "temperature": 0, "logprobs": 1,
                            "echo": True, "seed": 1234}
                    kind = "batch_score"
                else:
                    body = {"prompt": ps, "max_tokens": gen_tokens // 2, "temperature": 0,
                            "stop": ["\n"]}
                    kind = "batch_gen"
            elif k == 1:  # two seeded samples per prompt
                body = {"prompt": detok(prompts.ids(rng.randint(lo, hi))), "n": 2,
                        "max_tokens": gen_tokens, "temperature": 0.8, "top_p": 0.95,
                        "seed": rng.randrange(1 << 30)}
                kind = "sample"
            else:  # server-sent events, greedy
                body = {"prompt": [prompts.ids(rng.randint(lo, hi))], "max_tokens": gen_tokens,
                        "temperature": 0, "stop": rng.choice(stops), "stream": True}
                kind = "stream"
        pool.append({"kind": kind, "body": body})
    return pool


def sequences_of(body):
    p = body["prompt"]
    n_prompts = 1 if isinstance(p, str) or (p and isinstance(p[0], int)) else len(p)
    return n_prompts * body.get("n", 1)


# ----------------------------------------------------------------------------
# one answer: status, parsed body, structural checks


def answer(client, body):
    """Sends one request; returns a record with the parsed answer and any structural problems."""
    st, raw, dt, retried, ctype = client.request("POST", "/v1/completions", body)
    rec = {"status": st, "seconds": dt, "retried": retried, "problems": []}
    if st != 200:
        try:
            j = json.loads(raw)
            if not (isinstance(j.get("error"), dict) and j["error"].get("code") == st
                    and isinstance(j["error"].get("message"), str)):
                rec["problems"].append(f"HTTP {st} body is not an error object: {raw[:120]!r}")
            rec["error"] = j.get("error", {}).get("message")
        except ValueError:
            rec["problems"].append(f"HTTP {st} body is not JSON: {raw[:120]!r}")
        return rec
    want_choices = sequences_of(body)
    if body.get("stream"):
        if "text/event-stream" not in ctype:
            rec["problems"].append(f"stream content type {ctype}")
        events, done, probs = parse_sse(raw)
        rec["problems"] += probs
        if not done:
            rec["problems"].append("no [DONE]")
        texts, finish, ids = {}, {}, set()
        for ev in events:
            if "error" in ev:
                rec["problems"].append(f"error event: {ev['error']}")
                continue
            ids.add(ev.get("id"))
            for c in ev.get("choices", []):
                i = c["index"]
                if i in finish:
                    rec["problems"].append(f"choice {i}: an event after its finish_reason")
                texts[i] = texts.get(i, "") + c["text"]
                if c.get("finish_reason") is not None:
                    finish[i] = c["finish_reason"]
        if len(ids) != 1:
            rec["problems"].append(f"stream events carry ids {sorted(map(str, ids))}")
        rec["id"] = next(iter(ids)) if ids else None
        rec["choices"] = [{"index": i, "text": texts.get(i), "finish_reason": finish.get(i)}
                          for i in range(max(list(texts) + [-1]) + 1)]
        rec["usage"] = None
    else:
        try:
            j = json.loads(raw)
        except ValueError:
            rec["problems"].append(f"not JSON: {raw[:120]!r}")
            return rec
        rec["id"], rec["choices"], rec["usage"] = j.get("id"), j.get("choices"), j.get("usage")
    ch = rec["choices"] or []
    if [c.get("index") for c in ch] != list(range(want_choices)):
        rec["problems"].append(f"choice indices {[c.get('index') for c in ch]}, expected 0..{want_choices - 1}")
    for c in ch:
        if c.get("finish_reason") not in ("stop", "length"):
            rec["problems"].append(f"choice {c.get('index')}: finish_reason {c.get('finish_reason')!r}")
        if c.get("finish_reason") == "stop" and not body.get("echo"):
            for s in body.get("stop") or []:
                if s in (c.get("text") or ""):
                    rec["problems"].append(f"choice {c['index']}: text holds stop string {s!r}")
        lp = c.get("logprobs")
        if body.get("logprobs") is not None and not body.get("stream"):
            rec["problems"] += check_logprobs(body, c, lp)
    return rec


def check_logprobs(body, c, lp):
    """The lm-eval contract: N+1 entries, first null, the rest dicts holding the argmax."""
    p = body["prompt"]
    plist = [p] if p and isinstance(p[0], int) else p
    n = len(plist[c["index"] // body.get("n", 1)]) if not isinstance(p, str) else None
    probs = []
    if not isinstance(lp, dict):
        return [f"choice {c['index']}: no logprobs"]
    tl, top = lp.get("token_logprobs"), lp.get("top_logprobs")
    if n is not None and body.get("echo") and body.get("max_tokens") == 1 and c["finish_reason"] == "length":
        if len(tl) != n + 1 or len(top) != n + 1:
            probs.append(f"choice {c['index']}: {len(tl)} token_logprobs for {n} prompt tokens + 1")
    if tl and tl[0] is not None:
        probs.append(f"choice {c['index']}: the first token_logprob is not null")
    for i, (t, d) in enumerate(zip(tl[1:], top[1:]), 1):
        if not isinstance(t, float) or not isinstance(d, dict) or not d:
            probs.append(f"choice {c['index']}: entry {i} is {t!r} / {d!r}")
            break
        if t > max(d.values()) + 1e-12 or t > 1e-12:
            probs.append(f"choice {c['index']}: entry {i}: logprob {t} above the top {max(d.values())}")
            break
    return probs


# ----------------------------------------------------------------------------
# comparing an answer with the sequential one


def compare(kind, got, want, tol):
    """-> list of differences ('text' ones are greedy/sampled text differences)."""
    diffs = []
    g, w = got["choices"] or [], want["choices"] or []
    if len(g) != len(w):
        return [("shape", f"{len(g)} choices, expected {len(w)}")]
    for a, b in zip(g, w):
        if a.get("text") != b.get("text"):
            diffs.append(("text", f"choice {a['index']}: {a.get('text')!r} != {b.get('text')!r}"))
        elif a.get("finish_reason") != b.get("finish_reason"):
            diffs.append(("shape", f"choice {a['index']}: finish {a.get('finish_reason')} != {b.get('finish_reason')}"))
        la, lb = a.get("logprobs"), b.get("logprobs")
        if isinstance(lb, dict):
            ta, tb = la.get("token_logprobs"), lb.get("token_logprobs")
            if len(ta) != len(tb) or la.get("tokens") != lb.get("tokens"):
                diffs.append(("shape", f"choice {a['index']}: tokens differ"))
                continue
            worst = max((abs(x - y) for x, y in zip(ta, tb) if x is not None and y is not None), default=0)
            if worst > tol or any((x is None) != (y is None) for x, y in zip(ta, tb)):
                diffs.append(("logprob", f"choice {a['index']}: token_logprobs differ by {worst:.3g}"))
            for x, y in zip(la["top_logprobs"], lb["top_logprobs"]):
                if (x is None) != (y is None) or (x and abs(max(x.values()) - max(y.values())) > tol):
                    diffs.append(("logprob", f"choice {a['index']}: top_logprobs differ"))
                    break
    if got.get("usage") and want.get("usage") and got["usage"] != want["usage"]:
        diffs.append(("shape", f"usage {got['usage']} != {want['usage']}"))
    return diffs


def near_tie(client, body, got_text, want_text):
    """A text difference explained? The sequential request again with logprobs 2: the gap
    between the two best tokens where the texts part."""
    b = dict(body, logprobs=2, stream=False, n=1)
    if isinstance(b["prompt"], list) and b["prompt"] and isinstance(b["prompt"][0], list):
        b["prompt"] = b["prompt"][:1]
    st, raw, _, _, _ = client.request("POST", "/v1/completions", b)
    if st != 200:
        return None
    c = json.loads(raw)["choices"][0]["logprobs"]
    text = ""
    for tok, top in zip(c["tokens"], c["top_logprobs"]):
        if not got_text.startswith(text + tok):
            v = sorted(top.values(), reverse=True)
            return v[0] - v[1] if len(v) > 1 else None
        text += tok
    return None


# ----------------------------------------------------------------------------
# phases


def percentiles(xs):
    if not xs:
        return {}
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(math.ceil(p / 100 * len(xs))) - 1)]
    return {"n": len(xs), "p50_ms": round(q(50) * 1e3, 1), "p90_ms": round(q(90) * 1e3, 1),
            "p99_ms": round(q(99) * 1e3, 1), "max_ms": round(xs[-1] * 1e3, 1)}


def run_concurrent(url, bodies, clients):
    """Sends bodies[i] from `clients` threads taking the next index; -> records by index, wall s."""
    records = [None] * len(bodies)
    answered = [0] * len(bodies)
    next_i = [0]
    lock = threading.Lock()

    def worker():
        c = Client(url)
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(bodies):
                break
            try:
                rec = answer(c, bodies[i])
            except Exception as e:  # a lost answer: the connection failed
                rec = {"status": None, "problems": [f"{type(e).__name__}: {e}"], "seconds": None}
                c.close()
            with lock:
                answered[i] += 1
                records[i] = rec
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, answered, time.perf_counter() - t0


def proc_cpu(pid):
    """CPU seconds (user + system) of a process, from /proc; None when unknown."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError, IndexError, ValueError):
        return None


def settled(client, wait_s=2.0):
    """/health once nothing runs or waits (the engine may count a sequence as running for a
    moment after its client has the answer)."""
    deadline = time.time() + wait_s
    while True:
        h = client.get_json("/health")
        if (h["running"] == 0 and h["waiting"] == 0) or time.time() > deadline:
            return h
        time.sleep(0.01)


def health_delta(h0, h1):
    return {k: h1[k] - h0[k] for k in ("sequences", "prompt_tokens", "new_tokens", "steps")}


def phase_load(a, url, shards, summary):
    ctl = Client(url)
    info = ctl.get_json("/tokenizer_info")
    max_len = info["max_model_len"]
    rng = random.Random(a.seed)
    prompts = Prompts(shards, info["eos_token_id"], rng)
    detok = lambda ids: ctl.post_json("/detokenize", {"tokens": ids})["prompt"]
    distinct = a.distinct or max(1, a.requests // 4)
    mix = tuple(float(x) for x in a.mix.split(","))
    pool = build_pool(prompts, detok, distinct, max_len, rng, a.gen_tokens, mix)
    order = [j % distinct for j in range(a.requests)]
    rng.shuffle(order)

    # ---- sequential answers (each stream also asked for whole, to compare the two)
    expected = None
    if a.expected and os.path.exists(a.expected):
        saved = json.load(open(a.expected))
        if saved["pool"] == pool:
            expected = saved["answers"]
            print(f"sequential answers from {a.expected}")
    seq_problems = []
    if expected is None:
        expected = []
        h0 = ctl.get_json("/health")
        t0 = time.perf_counter()
        seq_lat = []
        for p in pool:
            body = dict(p["body"], stream=False) if p["kind"] == "stream" else p["body"]
            r = answer(ctl, body)
            seq_lat.append(r["seconds"])
            if r["status"] != 200 or r["problems"]:
                seq_problems.append(f"sequential {p['kind']}: HTTP {r['status']} {r['problems'][:2]}")
            if p["kind"] == "stream":
                s = answer(ctl, p["body"])
                for d in compare("stream", s, r, a.tol) if s["status"] == 200 else [("shape", "HTTP error")]:
                    seq_problems.append(f"sequential stream vs whole: {d[1]}")
            expected.append({k: r.get(k) for k in ("status", "choices", "usage")})
        dt = time.perf_counter() - t0
        hd = health_delta(h0, ctl.get_json("/health"))
        summary["sequential"] = {"requests": len(pool), "seconds": round(dt, 2),
                                 "requests_per_s": round(len(pool) / dt, 2),
                                 "new_tokens_per_s": round(hd["new_tokens"] / dt, 1),
                                 "prompt_tokens_per_s": round(hd["prompt_tokens"] / dt, 1),
                                 "latency": percentiles(seq_lat)}
        if a.expected:
            json.dump({"pool": pool, "answers": expected}, open(a.expected, "w"))

    # ---- concurrent load
    bodies = [pool[j]["body"] for j in order]
    h0 = ctl.get_json("/health")
    cpu0, scpu0 = os.times(), proc_cpu(a.server_pid)
    records, answered, wall = run_concurrent(url, bodies, a.clients)
    cpu1, scpu1 = os.times(), proc_cpu(a.server_pid)
    h1 = settled(ctl)
    hd = health_delta(h0, h1)

    lost = sum(1 for n in answered if n == 0) + sum(1 for r in records if r and r["status"] is None)
    dup_answers = sum(1 for n in answered if n > 1)
    ids = [r.get("id") for r in records if r and r["status"] == 200]
    dup_ids = len(ids) - len(set(ids))
    status = {}
    for r in records:
        status[str(r["status"])] = status.get(str(r["status"]), 0) + 1
    problems = list(seq_problems)
    diffs = {"text": 0, "logprob": 0, "shape": 0}
    text_diffs, lat = [], {}
    for j, r in zip(order, records):
        kind = pool[j]["kind"]
        lat.setdefault(kind, []).append(r["seconds"])
        if r["status"] != 200:
            problems.append(f"{kind}: HTTP {r['status']}: {r['problems'][:1]}")
            continue
        problems += [f"{kind}: {p}" for p in r["problems"]]
        for what, msg in compare(kind, r, expected[j], a.tol):
            diffs[what] += 1
            if what == "text":
                text_diffs.append((j, r, msg))
            else:
                problems.append(f"{kind}: {msg}")
    # text differences: explained by a near-tie of the two best tokens where the texts part?
    ties = []
    for j, r, msg in text_diffs[:20]:
        w = expected[j]["choices"]
        g = r["choices"]
        k = next(i for i in range(len(g)) if g[i]["text"] != w[i]["text"])
        gap = near_tie(ctl, pool[j]["body"], g[k]["text"], w[k]["text"]) if pool[j]["kind"] != "sample" else None
        ties.append({"kind": pool[j]["kind"], "gap": gap, "diff": msg[:200]})
        if gap is None or gap > a.tie_gap:
            problems.append(f"{pool[j]['kind']}: {msg[:200]} (top-2 gap {gap})")
    retried = sum(1 for r in records if r and r.get("retried"))
    seqs = sum(sequences_of(b) for b in bodies)
    if hd["sequences"] != seqs:
        problems.append(f"/health sequences grew by {hd['sequences']}, expected {seqs}")
    usage_new = 0
    usage_prompt = 0
    for j, r in zip(order, records):
        e = expected[j]
        if e.get("usage"):
            usage_new += e["usage"]["completion_tokens"]
            usage_prompt += e["usage"]["prompt_tokens"] * pool[j]["body"].get("n", 1)
    # (a stream's sequential answer is its whole twin's, which has the usage)
    if hd["new_tokens"] != usage_new or hd["prompt_tokens"] != usage_prompt:
        problems.append(f"/health grew by {hd['prompt_tokens']} prompt / {hd['new_tokens']} new tokens, "
                        f"the answers report {usage_prompt} / {usage_new}")
    if problems:
        problems.insert(0, f"{len(problems)} problems")
    summary["load"] = {
        "clients": a.clients, "requests": len(bodies), "distinct": distinct,
        "mix": {k: sum(1 for j in order if pool[j]["kind"] == k) for k in sorted({p["kind"] for p in pool})},
        "seconds": round(wall, 2), "requests_per_s": round(len(bodies) / wall, 2),
        "sequences": hd["sequences"], "steps": hd["steps"],
        "prompt_tokens": hd["prompt_tokens"], "new_tokens": hd["new_tokens"],
        "prompt_tokens_per_s": round(hd["prompt_tokens"] / wall, 1),
        "new_tokens_per_s": round(hd["new_tokens"] / wall, 1),
        "tokens_per_step": round(hd["new_tokens"] / max(1, hd["steps"]), 2),
        "client_cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 2),
        "server_cpu_s": round(scpu1 - scpu0, 2) if scpu0 is not None else None,
        "latency": {k: percentiles([x for x in v if x is not None]) for k, v in sorted(lat.items())},
        "latency_all": percentiles([r["seconds"] for r in records if r["seconds"] is not None]),
        "status": status, "lost": lost, "duplicate_answers": dup_answers, "duplicate_ids": dup_ids,
        "retried_connections": retried, "differences": diffs, "near_ties": ties,
        "problems": problems[:40],
        "health_after": {k: h1[k] for k in ("running", "waiting", "status")},
    }
    if h1["running"] or h1["waiting"]:
        problems.append(f"after the load /health says running {h1['running']} waiting {h1['waiting']}")
    summary["load"]["problems"] = problems[:40]
    ctl.close()
    return pool, expected


def gen_bodies(pool, expected, count):
    """Greedy generation requests of the pool (with their sequential answers)."""
    out = [(p["body"], e) for p, e in zip(pool, expected) if p["kind"] == "gen"]
    return out[:count]


def phase_overload(a, pool, expected, summary):
    srv = Server(a.moelab, a.checkpoint, a.data, 2, 2, a.threads)
    problems = []
    try:
        cases = gen_bodies(pool, expected, 24)
        records, _, wall = run_concurrent(srv.url, [b for b, _ in cases], 24)
        n503 = 0
        for (b, e), r in zip(cases, records):
            if r["status"] == 503:
                n503 += 1
                problems += r["problems"]
            elif r["status"] == 200:
                problems += r["problems"] + [m for _, m in compare("gen", r, e, a.tol)]
            else:
                problems.append(f"HTTP {r['status']}: {r['problems'][:1]}")
        c = Client(srv.url)
        h = settled(c)
        if h["status"] != "ok" or h["running"] or h["waiting"]:
            problems.append(f"after the burst /health {h}")
        r = answer(c, cases[0][0])
        if r["status"] != 200 or compare("gen", r, cases[0][1], a.tol):
            problems.append(f"a request after the burst: HTTP {r['status']}")
        if n503 == 0:
            problems.append("no 503 with 2 slots, a queue of 2 and 24 requests at once")
        c.close()
        rc = srv.stop()
        if rc != 0:
            problems.append(f"exit status {rc} after SIGTERM")
        summary["overload"] = {"requests": len(cases), "ok": len(cases) - n503, "503": n503,
                               "exit": rc, "problems": problems}
    finally:
        srv.cleanup()


def phase_sigterm(a, pool, expected, summary):
    """SIGTERM while 2 slots run long generations and others wait: the running ones must
    complete, the waiting ones get a JSON 503, every request one or the other."""
    srv = Server(a.moelab, a.checkpoint, a.data, 2, 32, a.threads)
    problems = []
    try:
        cases = [(dict(b, max_tokens=4 * a.gen_tokens, stop=[]), e) for b, e in gen_bodies(pool, expected, 24)]
        # the sequential answers of these bodies (no stop) from this same server, first
        c = Client(srv.url)
        want = [answer(c, b) for b, _ in cases]
        out = {}
        th = threading.Thread(target=lambda: out.update(zip(("records", "answered", "wall"),
                                                             run_concurrent(srv.url, [b for b, _ in cases], len(cases)))))
        th.start()
        # the signal once every request is in: 2 running, the others waiting
        deadline = time.time() + 30
        while time.time() < deadline:
            h = c.get_json("/health")
            if h["running"] + h["waiting"] + h["sequences"] - len(want) >= len(cases) and h["waiting"]:
                break
            time.sleep(0.002)
        c.close()
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(60)
        th.join(60)
        ok = refused = 0
        for (b, _), w, r in zip(cases, want, out.get("records", [])):
            if r["status"] == 200:
                ok += 1
                problems += r["problems"] + [m for _, m in compare("gen", r, w, a.tol)]
            elif r["status"] == 503:
                refused += 1
                problems += r["problems"]
            else:
                problems.append(f"HTTP {r['status']}: {r['problems'][:1]}")
        if rc != 0:
            problems.append(f"exit status {rc} after SIGTERM")
        # those waiting at the signal may still be admitted before the server reads it: each
        # request gets a whole answer or a 503, and the ones running at the signal complete
        if ok < h["running"] or ok == 0 or ok + refused != len(cases):
            problems.append(f"{ok} requests completed, {h['running']} were running at the signal")
        if ok + refused != len(cases):
            problems.append(f"{len(cases) - ok - refused} requests got neither an answer nor a 503")
        if "stopped after" not in srv.log_text():
            problems.append(f"no 'stopped after' line: {srv.log_text()[-200:]!r}")
        summary["sigterm"] = {"requests": len(cases), "at_signal": {k: h[k] for k in ("running", "waiting")},
                              "completed": ok, "refused_503": refused,
                              "exit": rc, "problems": problems}
    finally:
        srv.cleanup()


def want_tokens(records):
    return sum(r["usage"]["completion_tokens"] for r in records if r.get("usage"))


def phase_eval(a, url, summary):
    """The evaluation set scored through the server, against `moelab eval`."""
    lines = [json.loads(x) for x in open(a.evalset)]
    samples = [x for x in lines if "in_prompt" in x]
    P, T = len(samples[0]["in_prompt"]), len(samples[0]["target"])
    bodies = []
    for i in range(0, len(samples), a.eval_batch):
        ps = [s["in_prompt"] + s["target"] for s in samples[i:i + a.eval_batch]]
        bodies.append({"model": "moelab", "prompt": ps, "max_tokens": 1, "temperature": 0,
                       "logprobs": 1, "echo": True, "seed": 1234})
    res = {"samples": len(samples), "prompt": P, "target": T, "batch": a.eval_batch, "runs": []}
    for rep in range(a.eval_repeats):
        ctl = Client(url)
        h0 = ctl.get_json("/health")
        records, _, wall = run_concurrent(url, bodies, a.clients)
        hd = health_delta(h0, ctl.get_json("/health"))
        ctl.close()
        nll, top1, bad = [], [], 0
        for r in records:
            if r["status"] != 200 or r["problems"]:
                bad += 1
                continue
            for c in r["choices"]:
                tl = c["logprobs"]["token_logprobs"][P:P + T]
                tops = c["logprobs"]["top_logprobs"][P:P + T]
                nll.append(-sum(tl) / T)
                top1.append(sum(1 for t, d in zip(tl, tops) if t == max(d.values())) / T)
        run = {"seconds": round(wall, 2), "prompt_tokens": hd["prompt_tokens"],
               "prompt_tokens_per_s": round(hd["prompt_tokens"] / wall, 1), "failed": bad}
        if nll:
            run["ppl_ent"] = round(math.exp(sum(nll) / len(nll)), 4)
            run["m_f"] = round(sum(top1) / len(top1), 4)
        res["runs"].append(run)
        # moelab eval on the same set, alternating with the server runs
        if a.moelab and a.checkpoint:
            t0 = time.perf_counter()
            p = subprocess.run([a.moelab, "eval", a.checkpoint, "--evalset", a.evalset, "--data", a.data]
                               + (["--threads", str(a.threads)] if a.threads else []),
                               capture_output=True, text=True)
            outer = time.perf_counter() - t0
            m = re.search(r"(\d+) samples in ([\d.]+) s", p.stdout)
            row = re.search(r"^all\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", p.stdout, re.M)
            if p.returncode != 0 or not m or not row:
                res.setdefault("problems", []).append(f"moelab eval: {p.stderr.strip()[-200:]}")
            else:
                run["moelab_eval"] = {"seconds": float(m.group(2)), "seconds_with_load": round(outer, 2),
                                      "m_in": float(row.group(1)), "m_ex": float(row.group(2)),
                                      "m_f": float(row.group(3)), "ppl_ent": float(row.group(4))}
    summary["eval"] = res


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def phase_score(a, url, shards, summary):
    """Scoring speed: lm-eval's loglikelihood requests (echo, logprobs 1, max_tokens 1) of
    --score-len tokens, --eval-batch prompts per request, from --clients clients, against the
    decoder's batched prefill of --slots prompts of the same length (`moelab serve --bench-score`,
    no HTTP), in alternating runs; prompt tokens per second and their ratios, medians."""
    rng = random.Random(a.seed)
    n = a.score_len
    prompts = []
    for _ in range(a.score_requests * a.eval_batch):
        shard = rng.choice(shards)
        i = rng.randrange(0, len(shard) - n)
        prompts.append(list(shard[i:i + n]))
    bodies = [{"model": "moelab", "prompt": prompts[i:i + a.eval_batch], "max_tokens": 1,
               "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234}
              for i in range(0, len(prompts), a.eval_batch)]
    res = {"prompt_len": n, "requests": len(bodies), "batch": a.eval_batch, "clients": a.clients,
           "runs": []}
    for rep in range(a.eval_repeats):
        ctl = Client(url)
        h0 = ctl.get_json("/health")
        records, _, wall = run_concurrent(url, bodies, a.clients)
        hd = health_delta(h0, ctl.get_json("/health"))
        ctl.close()
        bad = sum(1 for r in records if r["status"] != 200 or r["problems"])
        run = {"seconds": round(wall, 3), "prompt_tokens": hd["prompt_tokens"],
               "server_tokens_per_s": round(hd["prompt_tokens"] / wall, 1), "failed": bad}
        if a.checkpoint:
            p = subprocess.run([a.bench_moelab or a.moelab, "serve", a.checkpoint, "--data", a.data, "--slots", str(a.slots),
                                "--bench-score", str(n)] + list(a.serve_extra)
                               + (["--threads", str(a.threads)] if a.threads else []),
                               capture_output=True, text=True)
            if p.returncode != 0:
                res.setdefault("problems", []).append(f"--bench-score: {p.stderr.strip()[-200:]}")
            else:
                run["bench"] = json.loads(p.stdout.strip().splitlines()[-1])
        res["runs"].append(run)
    srv_tps = [r["server_tokens_per_s"] for r in res["runs"]]
    res["server_tokens_per_s"] = median(srv_tps)
    benches = [r["bench"] for r in res["runs"] if "bench" in r]
    if benches:
        for k in ("decoder_all_logits_tokens_per_s", "decoder_last_logits_tokens_per_s",
                  "engine_scoring_tokens_per_s"):
            res[k] = median([b[k] for b in benches])
        res["server_over_decoder_all"] = round(median(
            [r["server_tokens_per_s"] / r["bench"]["decoder_all_logits_tokens_per_s"] for r in res["runs"] if "bench" in r]), 3)
        res["server_over_decoder_last"] = round(median(
            [r["server_tokens_per_s"] / r["bench"]["decoder_last_logits_tokens_per_s"] for r in res["runs"] if "bench" in r]), 3)
    summary["score"] = res


# ----------------------------------------------------------------------------
# report


def report(summary):
    s = summary
    if "sequential" in s:
        q = s["sequential"]
        print(f"\nsequential (1 client): {q['requests']} distinct requests in {q['seconds']} s, "
              f"{q['requests_per_s']} req/s, {q['new_tokens_per_s']} new tok/s, "
              f"{q['prompt_tokens_per_s']} prompt tok/s")
    if "load" in s:
        L = s["load"]
        print(f"\nload: {L['clients']} clients, {L['requests']} requests ({L['distinct']} distinct) "
              f"mix {L['mix']}")
        print(f"  {L['seconds']} s  {L['requests_per_s']} req/s  {L['new_tokens_per_s']} new tok/s  "
              f"{L['prompt_tokens_per_s']} prompt tok/s  ({L['new_tokens']} new, {L['prompt_tokens']} "
              f"prompt tokens, {L['steps']} steps, {L['tokens_per_step']} new tokens/step)")
        print(f"  CPU seconds during the load: client {L['client_cpu_s']}, server {L['server_cpu_s']}")
        print(f"  {'type':<12}{'n':>6}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for k, v in list(L["latency"].items()) + [("all", L["latency_all"])]:
            print(f"  {k:<12}{v['n']:>6}{v['p50_ms']:>10}{v['p90_ms']:>10}{v['p99_ms']:>10}{v['max_ms']:>10}")
        print(f"  status {L['status']}  lost {L['lost']}  duplicate answers {L['duplicate_answers']}  "
              f"duplicate ids {L['duplicate_ids']}  retried connections {L['retried_connections']}  "
              f"differences {L['differences']}  near ties {len(L['near_ties'])}")
    if "overload" in s:
        o = s["overload"]
        print(f"\noverload (2 slots, queue 2): {o['requests']} at once: {o['ok']} answered, "
              f"{o['503']} refused with 503; exit {o['exit']}")
    if "sigterm" in s:
        o = s["sigterm"]
        print(f"\nSIGTERM with {o['at_signal']['running']} running, {o['at_signal']['waiting']} waiting: "
              f"{o['completed']} completed, {o['refused_503']} refused with 503; "
              f"exit {o['exit']}")
    if "eval" in s:
        e = s["eval"]
        print(f"\nevaluation set: {e['samples']} samples x ({e['prompt']}+{e['target']}) tokens, "
              f"{e['batch']} per request")
        for r in e["runs"]:
            m = r.get("moelab_eval", {})
            print(f"  server {r['seconds']} s, {r['prompt_tokens_per_s']} prompt tok/s, "
                  f"PPL_ent {r.get('ppl_ent')}, M(f) {r.get('m_f')}"
                  + (f" | moelab eval {m['seconds']} s, PPL_ent {m['ppl_ent']}, M(f) {m['m_f']}" if m else ""))
    if "score" in s:
        e = s["score"]
        print(f"\nscoring: {e['requests']} requests of {e['batch']} prompts x {e['prompt_len']} tokens, "
              f"{e['clients']} clients, {len(e['runs'])} runs (medians)")
        for r in e["runs"]:
            b = r.get("bench", {})
            print(f"  server {r['server_tokens_per_s']} prompt tok/s"
                  + (f" | decoder all logits {b['decoder_all_logits_tokens_per_s']}, last only "
                     f"{b['decoder_last_logits_tokens_per_s']}, engine {b['engine_scoring_tokens_per_s']}" if b else ""))
        if "server_over_decoder_all" in e:
            print(f"  server / decoder (all logits) {e['server_over_decoder_all']}, "
                  f"server / decoder (last logits) {e['server_over_decoder_last']}")
    probs = all_problems(s)
    print(f"\n{'PASS' if not probs else 'FAIL'}: {len(probs)} problems")
    for p in probs[:30]:
        print("  " + p)


def all_problems(s):
    out = []
    for phase in ("load", "overload", "sigterm", "eval", "score"):
        for p in s.get(phase, {}).get("problems", []):
            out.append(f"{phase}: {p}")
    if "eval" in s:
        for r in s["eval"]["runs"]:
            if r["failed"]:
                out.append(f"eval: {r['failed']} failed requests")
            m = r.get("moelab_eval")
            if m and r.get("ppl_ent") and abs(r["ppl_ent"] - m["ppl_ent"]) > 1e-3 * m["ppl_ent"]:
                out.append(f"eval: server PPL_ent {r['ppl_ent']} vs moelab eval {m['ppl_ent']}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server (load and eval phases only)")
    ap.add_argument("--moelab", default="build/moelab")
    ap.add_argument("--checkpoint")
    ap.add_argument("--data", required=True, help="the data folder (its token shards give prompts)")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--queue", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="server compute threads")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--distinct", type=int, default=0, help="distinct requests (default requests/4)")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="0.5,0.4,0.1",
                    help="weights of scoring, generation, other (batched, n=2, stream) requests")
    ap.add_argument("--tol", type=float, default=1e-4, help="log-probability tolerance")
    ap.add_argument("--tie-gap", type=float, default=1e-3,
                    help="a greedy text difference is a near-tie when the top-2 gap is below this")
    ap.add_argument("--phases", default="load")
    ap.add_argument("--expected", help="cache of the sequential answers (reused when the pool matches)")
    ap.add_argument("--evalset", help="for the eval phase")
    ap.add_argument("--eval-batch", type=int, default=8, help="samples per request in the eval phase")
    ap.add_argument("--eval-repeats", type=int, default=1)
    ap.add_argument("--score-len", type=int, default=64, help="prompt tokens in the score phase")
    ap.add_argument("--score-requests", type=int, default=256, help="requests per run in the score phase")
    ap.add_argument("--bench-moelab", help="the moelab whose serve --bench-score the score phase runs (default --moelab)")
    ap.add_argument("--serve-extra", default="", help="more moelab serve flags (e.g. '--prefill-chunk 1024')")
    ap.add_argument("--out")
    a = ap.parse_args()
    phases = a.phases.split(",")
    a.serve_extra = a.serve_extra.split()
    if not a.url and not a.checkpoint:
        ap.error("give --url or --checkpoint")
    if not a.checkpoint and set(phases) & {"overload", "sigterm"}:
        ap.error("the overload and sigterm phases start servers: give --checkpoint")

    a.server_pid = None
    summary = {"uptime": os.popen("uptime").read().strip(), "slots": a.slots, "phases": phases}
    shards = read_shards(a.data)
    srv = None
    try:
        url = a.url
        if not url:
            srv = Server(a.moelab, a.checkpoint, a.data, a.slots, a.queue, a.threads, a.serve_extra)
            url = srv.url
            a.server_pid = srv.proc.pid
        pool = expected = None
        if "load" in phases or set(phases) & {"overload", "sigterm"}:
            if "load" not in phases:
                a.requests = min(a.requests, 64)
            pool, expected = phase_load(a, url, shards, summary)
        if "eval" in phases:
            phase_eval(a, url, summary)
        if "score" in phases:
            phase_score(a, url, shards, summary)
        if srv:
            rc = srv.stop()
            summary["exit"] = rc
            if rc != 0:
                summary.setdefault("load", {}).setdefault("problems", []).append(f"server exit {rc}")
        if "overload" in phases:
            phase_overload(a, pool, expected, summary)
        if "sigterm" in phases:
            phase_sigterm(a, pool, expected, summary)
    finally:
        if srv:
            srv.cleanup()
    summary["uptime_after"] = os.popen("uptime").read().strip()
    report(summary)
    if a.out:
        json.dump(summary, open(a.out, "w"), indent=1)
    sys.exit(1 if all_problems(summary) else 0)


if __name__ == "__main__":
    main()
