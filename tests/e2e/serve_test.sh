#!/usr/bin/env bash
# moelab serve end to end on a tiny model trained for 20 steps: the server's greedy text equals
# `moelab generate --greedy`, the lm-evaluation-harness request shapes are answered (remote
# tokenizer routes, echo scoring), a port in use and bad flags fail with one line, and SIGTERM
# stops it cleanly (exit 0) after answering the request in flight.
set -u
moelab=$1
source "$(dirname "$0")/testlib.sh"
cd "$tmp"
export OMP_NUM_THREADS=2

verses_data "$moelab" 30 10 320 13
tiny_lm "$moelab" 64
ck=run/step_00000020

# under a soft open-file limit of 256 (where the hard one allows): the server raises it to the hard
# limit for its 512 connections
hard=$(ulimit -Hn)
(
  if [ "$hard" = unlimited ] || [ "$hard" -ge 1024 ]; then ulimit -Sn 256; fi
  exec "$moelab" serve $ck --data data --port 0 --slots 2 --threads 2 >serve.out 2>serve.log
) &
pid=$!
trap 'kill -9 $pid 2>/dev/null; [ -n "${KEEP_TMP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"' EXIT
port=""
for i in $(seq 1 100); do
  port=$(sed -n 's/.*http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' serve.log | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "FAIL: the server did not start: $(cat serve.log)"; exit 1; }
files=$(awk '/^Max open files/ {print $4 "/" $5}' /proc/$pid/limits)
[ "${files%/*}" = "${files#*/}" ] && ok || bad "the open-file limit was not raised: soft/hard $files"

# ---- the same greedy text as moelab generate
"$moelab" generate $ck --data data --threads 2 --prompt "Verse 3 of chapter" --greedy --max-new 12 >g.txt 2>/dev/null
python3 - "$port" g.txt >py.log 2>&1 <<'PY' && ok || bad "requests: $(tail -3 py.log)"
import json, sys, urllib.request
port, gen = sys.argv[1], open(sys.argv[2]).read()
def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())
def get(path):
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60).read())
r = post("/v1/completions", {"prompt": "Verse 3 of chapter", "max_tokens": 12, "temperature": 0})
assert r["choices"][0]["text"] == gen, (r["choices"][0]["text"], gen)
# the harness's remote tokenizer, then a loglikelihood request as it sends one
info = get("/tokenizer_info")
eos = post("/tokenize", {"prompt": info["eos_token"], "add_special_tokens": False})["tokens"]
assert len(eos) == 1 and eos[0] == info["eos_token_id"], eos
ctx = post("/tokenize", {"prompt": "Verse 3 of chapter 7:", "add_special_tokens": False})["tokens"]
cont = post("/tokenize", {"prompt": " and the king", "add_special_tokens": False})["tokens"]
assert post("/detokenize", {"tokens": ctx})["prompt"] == "Verse 3 of chapter 7:"
r = post("/v1/completions", {"model": "moelab", "prompt": [ctx + cont, ctx], "temperature": 0,
                             "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True})
ch = sorted(r["choices"], key=lambda c: c["index"])
lp = ch[0]["logprobs"]
assert len(lp["token_logprobs"]) == len(ctx) + len(cont) + 1 and lp["token_logprobs"][0] is None
score = sum(lp["token_logprobs"][len(ctx):-1])
assert score < 0, score
greedy = all(l == max(t.values()) for l, t in
             zip(lp["token_logprobs"][len(ctx):-1], lp["top_logprobs"][len(ctx):-1]))
# the context's own log-probabilities agree between the two prompts of the batch
a, b = ch[0]["logprobs"]["token_logprobs"][1:len(ctx)], ch[1]["logprobs"]["token_logprobs"][1:len(ctx)]
assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
print("score", score, "greedy", greedy)
PY

# ---- special tokens: the text path of the harness (tokenized_requests=False) sends
# /detokenize's text, which must tokenize to the same ids, specials included; `generate --prompt`
# reads "</s>" as the server does; both end a prompt at the context's end alike
"$moelab" generate $ck --data data --threads 2 --prompt "</s>Verse 3 of</s>" --greedy --max-new 8 >gs.txt 2>gs.err || bad "generate with </s>: $(tail -1 gs.err)"
long="Verse 3 of chapter 4: and the king went up to the city of David, number 5. Verse 4 of chapter"
"$moelab" generate $ck --data data --threads 2 --prompt "$long" --greedy --max-new 40 >ge.txt 2>ge.err || bad "generate at the end: $(tail -1 ge.err)"
"$moelab" generate $ck --data data --threads 2 --prompt "$long $long" --greedy --max-new 4 >/dev/null 2>gl.err && bad "generate: a prompt over the context was taken" || ok
python3 - "$port" gs.txt ge.txt ge.err gl.err "$long" >sp.log 2>&1 <<'PY' && ok || bad "special tokens, context end: $(tail -3 sp.log)"
import json, re, sys, urllib.error, urllib.request
port = sys.argv[1]
gen_special, gen_end, end_err, long_err = (open(f).read() for f in sys.argv[2:6])
long = sys.argv[6]
def post(path, body, status=200):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        r = urllib.request.urlopen(req, timeout=60)
        code, data = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, data = e.code, e.read()
    assert code == status, (path, body, code, data)
    return json.loads(data)
tok = lambda t: post("/tokenize", {"prompt": t, "add_special_tokens": False})["tokens"]
detok = lambda ids: post("/detokenize", {"tokens": ids})["prompt"]
eos = post("/tokenize", {"prompt": "</s>"})["tokens"]
bos, unk = tok("<s>"), tok("<unk>")
assert len(eos) == len(bos) == len(unk) == 1 and len({eos[0], bos[0], unk[0]}) == 3, (eos, bos, unk)
assert detok(eos) == "</s>", detok(eos)  # was "": the harness's text path lost it
# ids with specials anywhere round-trip through /detokenize and /tokenize
a, b = tok("Verse 3 of chapter 7:"), tok("and the king went up")
for ids in (eos, eos + a, a + eos, a + eos + b, bos + a + unk + eos + eos + b + eos, eos + eos):
    assert tok(detok(ids)) == ids, (ids, detok(ids), tok(detok(ids)))
# the harness's loglikelihood requests, as ids and as the text its remote tokenizer decodes them
# to: an empty context is the end-of-text id, a rolling window begins with it too
pairs = [(eos, a), (a, b), (eos, a + b), (a + eos, b)]
def score(prompt):
    r = post("/v1/completions", {"model": "moelab", "prompt": prompt, "temperature": 0,
                                 "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True})
    return [c["logprobs"]["token_logprobs"] for c in sorted(r["choices"], key=lambda c: c["index"])]
as_ids = score([c + x for c, x in pairs])
as_text = score([detok(c + x) for c, x in pairs])
for (c, x), i, t in zip(pairs, as_ids, as_text):
    si, st = sum(i[len(c):-1]), sum(t[len(c):-1])
    assert len(i) == len(t) and abs(si - st) < 1e-4, (c, x, si, st)
# `moelab generate --prompt "</s>..."`: the server's reading of the same text
r = post("/v1/completions", {"prompt": "</s>Verse 3 of</s>", "max_tokens": 8, "temperature": 0})
assert r["choices"][0]["text"] == gen_special, (r["choices"][0]["text"], gen_special)
assert r["usage"]["prompt_tokens"] == len(tok("</s>Verse 3 of</s>"))
# the context's end (64 positions): the same tokens and a "length" end in both
n = len(tok(long))
assert 40 < n < 64, n
r = post("/v1/completions", {"prompt": long, "max_tokens": 40, "temperature": 0, "logprobs": 0})
ch = r["choices"][0]
assert ch["finish_reason"] == "length" and len(ch["logprobs"]["tokens"]) == 64 - n + 1, (ch["finish_reason"], n, len(ch["logprobs"]["tokens"]))
assert ch["text"] == gen_end, (ch["text"], gen_end)
assert f"after {64 - n + 1} new tokens (the prompt has {n})" in end_err, end_err
over = post("/v1/completions", {"prompt": long + " " + long, "max_tokens": 4}, 400)
assert "more than the model's context (64)" in over["error"]["message"], over
assert "more than the model's context (64)" in long_err, long_err
# the harness's generate_until with max_length=64 and max_gen_toks=G keeps the context's last
# 64 - 1 - G tokens: the prompt and G new tokens fit, nothing is cut by the server
G = 8
ctx = tok(long + " " + long)[-(64 - 1 - G):]
r = post("/v1/completions", {"prompt": [ctx], "model": "moelab", "max_tokens": G, "temperature": 0,
                             "stop": ["\n\n", "</s>"], "seed": 1234})
assert r["usage"]["prompt_tokens"] == 64 - 1 - G and r["usage"]["completion_tokens"] <= G, r["usage"]
print("ok")
PY

# ---- refusals at start-up: one line each
expect_error "port in use" "cannot listen on 127.0.0.1:$port" "$moelab" serve $ck --data data --port "$port"
expect_error "--slots 0" "slots" "$moelab" serve $ck --data data --slots 0
expect_error "no checkpoint" "nothere" "$moelab" serve nothere --data data
expect_error "--max-connections 0" "max-connections" "$moelab" serve $ck --data data --max-connections 0
expect_error "--read-timeout 0" "read-timeout" "$moelab" serve $ck --data data --read-timeout 0
expect_error "--max-body 10" "max-body" "$moelab" serve $ck --data data --max-body 10
# more connections than the open-file limit (hard 200 here) leaves files for: refused, naming both
expect_error "--max-connections past ulimit -n" "max-connections 512 .*open-file limit.*200 files" \
  bash -c 'ulimit -n 200 && exec "$@"' - "$moelab" serve $ck --data data --max-connections 512

# ---- SIGTERM: the request in flight (a stream, stopped after its first event) is answered in
# full, then a clean exit
python3 - "$port" "$pid" >inflight.log 2>&1 <<'PY'
import json, os, signal, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/completions",
                             json.dumps({"prompt": "Verse", "max_tokens": 40, "n": 2,
                                         "stream": True}).encode())
r = urllib.request.urlopen(req, timeout=60)
first = r.readline()
assert first.startswith(b"data: "), first
os.kill(int(sys.argv[2]), signal.SIGTERM)
rest = (first + r.read()).decode()
events = [e[6:] for e in rest.split("\n\n") if e.startswith("data: ")]
assert events[-1] == "[DONE]", events[-3:]
ends = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"] if c["finish_reason"]]
print("finished", ends)
PY
wait $pid
rc=$?
[ $rc = 0 ] && ok || bad "serve exit $rc after SIGTERM: $(tail -2 serve.log)"
grep -q "serve: stopped after" serve.log && ok || bad "no stop line: $(tail -2 serve.log)"
grep -Eq "finished \['(length|stop)', '(length|stop)'\]" inflight.log && ok || bad "the request in flight: $(tail -3 inflight.log)"

# ---- a second signal while the stop waits (a stalled upload): the server ends at once, by the
# signal, without the trainer's checkpoint message
"$moelab" serve $ck --data data --port 0 --slots 2 --threads 2 --read-timeout 60 >serve2.out 2>serve2.log &
pid2=$!
port2=""
for i in $(seq 1 100); do
  port2=$(sed -n 's/.*http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' serve2.log | head -1)
  [ -n "$port2" ] && break
  sleep 0.1
done
python3 -c "
import socket, sys, time
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
s.sendall(b'POST /tokenize HTTP/1.1\r\nContent-Length: 100\r\n\r\n{')
open('stalled.sent', 'w').close()
time.sleep(8)" "$port2" &
stalled=$!
# the upload must be under way before the first signal (python can take seconds to start on a
# loaded machine, and a server with nothing to wait for stops at the first signal)
for i in $(seq 1 100); do [ -e stalled.sent ] && break; sleep 0.1; done
sleep 0.2
kill -TERM $pid2
for i in $(seq 1 40); do grep -q "serve: stopping" serve2.log && break; sleep 0.05; done
sleep 0.2
kill -TERM $pid2
wait $pid2
rc=$?
kill $stalled 2>/dev/null
[ $rc = 143 ] && ok || bad "second SIGTERM: exit $rc, expected 143 (by the signal): $(tail -2 serve2.log)"
grep -q "a second signal ends the server" serve2.log && ! grep -q checkpoint serve2.log && ok || bad "second signal messages: $(cat serve2.log)"
finish serve
