"""Parity of moelab against the PyTorch implementation in gptoss.py: identical weights and data,
then logits, losses and every parameter gradient compared, in float64 (tight) and float32."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptoss  # noqa: E402

BASE = {
    "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 24, "sliding_window": 5,
    "attention_sinks": True, "max_position_embeddings": 64, "swiglu_limit": 2.0,
    "initializer_range": 0.2, "router_aux_loss_coef": 0.02, "router_z_loss_coef": 0.003,
}
CASES = {
    "dense": {"ffn_type": "dense"},
    "moe_e8_top2": {"ffn_type": "moe", "num_local_experts": 8, "num_experts_per_tok": 2},
    "moe_e4_top1_yarn": {"ffn_type": "moe", "num_local_experts": 4, "num_experts_per_tok": 1,
                         "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                          "beta_slow": 1.0, "original_max_position_embeddings": 8}},
    "dense_plain": {"ffn_type": "dense", "attention_sinks": False, "attention_bias": False,
                    "sliding_window": 0, "tie_word_embeddings": True, "swiglu_limit": 0.0},
}
TOL = {"f64": 1e-9, "f32": 2e-4}  # max |diff| / max |reference| per tensor


def run_case(moelab, workdir, name, extra, dtype):
    cfg = dict(BASE, **extra)
    cfg_path = os.path.join(workdir, f"{name}.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    out = os.path.join(workdir, f"{name}.{dtype}.safetensors")
    subprocess.run([moelab, "model", "dump", cfg_path, "--out", out, "--dtype", dtype,
                    "--batch", "2", "--seq", "13", "--seed", "7"], check=True)
    T, meta = gptoss.load_safetensors(out)
    full = json.loads(meta["config"])  # the config as moelab resolved it (layer types etc.)
    tdtype = torch.float64 if dtype == "f64" else torch.float32
    params = {n: torch.tensor(v, dtype=tdtype, requires_grad=True) for n, v in T.items()
              if not n.startswith(("grad:", "input.", "output."))}
    tokens = torch.tensor(T["input.tokens"]).long()
    targets = torch.tensor(T["input.targets"]).long()
    logits, lm, aux, zl = gptoss.forward(full, params, tokens, targets)
    (lm + aux + zl).backward()

    worst = {"tensor": None, "rel": 0.0, "abs": 0.0}
    ok = True

    def compare(what, ours, ref):
        nonlocal ok
        ref = np.asarray(ref, dtype=np.float64)
        diff = np.max(np.abs(np.asarray(ours, dtype=np.float64) - ref)) if ref.size else 0.0
        scale = max(np.max(np.abs(ref)) if ref.size else 0.0, 1e-30)
        rel = diff / scale
        if rel > TOL[dtype]:
            ok = False
            print(f"  FAIL {name} {dtype} {what}: max|diff| {diff:.3e}, relative {rel:.3e}")
        return rel, diff

    compare("logits", T["output.logits"], logits.detach().numpy())
    ours_losses = T["output.losses"]
    for i, (label, ref) in enumerate([("lm loss", lm), ("aux loss", aux), ("z loss", zl)]):
        compare(label, [ours_losses[i]], [float(ref)])
    for n, p in params.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        rel, diff = compare("grad " + n, T["grad:" + n], g.detach().numpy())
        if rel >= worst["rel"]:
            worst = {"tensor": n, "rel": rel, "abs": diff}
    print(f"  {name:18s} {dtype}: lm {float(lm):.6f} aux {float(aux):.3e} z {float(zl):.3e}; "
          f"largest gradient error {worst['rel']:.2e} relative ({worst['abs']:.2e} absolute) "
          f"in {worst['tensor']}")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moelab", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    torch.set_num_threads(1)
    results = [run_case(a.moelab, a.workdir, n, e, d) for n, e in CASES.items() for d in ("f64", "f32")]
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
