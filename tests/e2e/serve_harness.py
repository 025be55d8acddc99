#!/usr/bin/env python3
"""lm-evaluation-harness's own `local-completions` model against `moelab serve`.

Not part of `make test` (lm_eval is not a Debian package): run it where `pip install
"lm_eval[api]"` is done, or with PYTHONPATH pointing at a source checkout of
lm-evaluation-harness. It starts the server on a free port and checks, with the harness's code
(remote tokenizer, max_length = the model's context, max_gen_toks = 8):

* log-likelihoods and rolling log-likelihoods are the same through the ids path
  (tokenized_requests=True) and the text path (tokenized_requests=False, which sends
  /detokenize's text), special tokens and an empty context included;
* generate_until's greedy text equals `moelab generate --greedy` on the same prompt.

  python3 tests/e2e/serve_harness.py --moelab build/moelab --checkpoint CK --data DATA
"""
import argparse
import json
import logging
import re
import subprocess
import sys
import urllib.request

from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI

LL = [("", " Verse 3 of chapter"), ("Verse 3 of chapter 7:", " and the king"),
      ("Verse 3", " of chapter 4: and the king went up to the city"), ("And", " the king</s>Verse")]
DOC = "Verse 3 of chapter 4: and the king went up to the city of David, number 5.</s>Verse 4 of chapter"
GEN = ["Verse 3 of chapter", "And the king"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moelab", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    p = subprocess.Popen([a.moelab, "serve", a.checkpoint, "--data", a.data, "--port", "0",
                          "--slots", "2", "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", p.stderr.readline())
        if not m:
            sys.exit("FAIL: the server did not start")
        url = f"http://127.0.0.1:{m.group(1)}"
        ctx = json.loads(urllib.request.urlopen(url + "/v1/models").read())["data"][0]["max_model_len"]

        def lm(tokenized):
            return LocalCompletionsAPI(base_url=url + "/v1/completions", model="moelab",
                                       tokenizer_backend="remote", tokenized_requests=tokenized,
                                       max_length=ctx, max_gen_toks=8)

        fails = 0
        ins = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(LL)]
        for (c, x), s, t in zip(LL, lm(True).loglikelihood(ins), lm(False).loglikelihood(ins)):
            ok = abs(s[0] - t[0]) < 1e-4 and s[1] == t[1]
            fails += not ok
            print(f"{'ok' if ok else 'FAIL'} loglikelihood {c!r} {x!r}: ids {s[0]:.6f}, text {t[0]:.6f}")
        roll = [Instance("loglikelihood_rolling", {}, (DOC,), 0)]
        s, t = lm(True).loglikelihood_rolling(roll)[0], lm(False).loglikelihood_rolling(roll)[0]
        fails += not abs(s - t) < 1e-4
        print(f"{'ok' if abs(s - t) < 1e-4 else 'FAIL'} rolling: ids {s:.6f}, text {t:.6f}")
        kw = {"until": ["\n\n"], "do_sample": False, "temperature": 0}
        outs = lm(True).generate_until([Instance("generate_until", {}, (g, dict(kw)), i)
                                        for i, g in enumerate(GEN)])
        for g, out in zip(GEN, outs):
            want = subprocess.run([a.moelab, "generate", a.checkpoint, "--data", a.data, "--prompt", g,
                                   "--greedy", "--max-new", "8"], capture_output=True, text=True).stdout
            fails += out != want
            print(f"{'ok' if out == want else 'FAIL'} generate_until {g!r}: {out!r}, generate {want!r}")
    finally:
        p.terminate()
        p.wait(timeout=30)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
