"""transformers' GptOss forward, re-implemented in PyTorch from a Hugging Face folder exactly as
modeling_gpt_oss.py (transformers commit 00d4b3d2142cb4ced2f51b90614b5d26bc045015) computes it in
eval mode with eager attention: names and layouts from the files, gate/up interleaved, sinks as
an extra softmax column after subtracting the row maximum, clamped SwiGLU with the hard-coded
alpha 1.702 and limit 7, top-k router with a softmax over the selected logits scattered into
dense scores, every expert computed and weighted by its score. YaRN as _compute_yarn_parameters
of that era (factor = max_position_embeddings / original_max_position_embeddings when the latter
is given, truncate flag, attention factor 0.1 ln(factor) + 1).

The logits are compared with moelab's (`moelab export hf ... --logits FILE`). --mutate also runs
the same forward with deliberate mistakes (gate/up taken as halves, sinks ignored, router
softmax over all experts) and requires each to be caught, so that the check can fail."""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        raw = data[8 + hlen + a : 8 + hlen + b]
        if t["dtype"] == "F32":
            arr = np.frombuffer(raw, dtype=np.float32)
        elif t["dtype"] == "BF16":  # bf16 is the top half of an f32
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] == "I32":
            arr = np.frombuffer(raw, dtype=np.int32)
        else:
            raise SystemExit(f"{path}: {name}: dtype {t['dtype']} not read here")
        out[name] = torch.from_numpy(arr.reshape(t["shape"]).copy())
    return out


# ---- rotary (modeling_rope_utils: default and yarn)

def rope_parameters(cfg):
    base, dim = cfg["rope_theta"], cfg["head_dim"]
    rs = cfg.get("rope_scaling") or {"rope_type": "default"}
    if rs.get("rope_type", rs.get("type")) != "yarn":
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return inv, 1.0
    factor = rs["factor"]
    if "original_max_position_embeddings" in rs:
        orig = rs["original_max_position_embeddings"]
        factor = cfg["max_position_embeddings"] / orig
    else:
        orig = cfg["max_position_embeddings"]
    attention_factor = rs.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1
    truncate = rs.get("truncate", True)

    def corr_dim(rot):
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extra_factor = 1 - ramp
    return inter * (1 - extra_factor) + extra * extra_factor, attention_factor


def rotary(cfg, T):
    inv, scale = rope_parameters(cfg)
    pos = torch.arange(T).float()
    freqs = (inv[:, None].float() @ pos[None, :]).transpose(0, 1)  # [T, hd/2]
    return freqs.cos() * scale, freqs.sin() * scale


def apply_rotary(x, cos, sin):  # x [B, heads, T, hd]; halves, not pairs
    a, b = torch.chunk(x, 2, dim=-1)
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


# ---- the decoder (GptOssRMSNorm, GptOssAttention with eager_attention_forward, GptOssMLP)

def rmsnorm(x, w, eps):
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (w * x32).to(x.dtype)


def attention(cfg, P, p, x, cos, sin, sliding, mutate):
    B, T, _ = x.shape
    H, KV, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def lin(n, inp):
        return F.linear(inp, P[p + f"self_attn.{n}.weight"], P.get(p + f"self_attn.{n}.bias"))

    q = lin("q_proj", x).view(B, T, -1, hd).transpose(1, 2)
    k = lin("k_proj", x).view(B, T, -1, hd).transpose(1, 2)
    v = lin("v_proj", x).view(B, T, -1, hd).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    rep = H // KV
    k = k[:, :, None].expand(B, KV, rep, T, hd).reshape(B, H, T, hd)  # repeat_kv
    v = v[:, :, None].expand(B, KV, rep, T, hd).reshape(B, H, T, hd)
    qi, ki = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = ki <= qi
    if sliding:  # masking_utils sliding_window_overlay: kv_idx > q_idx - sliding_window
        allowed = allowed & (ki > qi - cfg["sliding_window"])
    mask = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))
    w = torch.matmul(q, k.transpose(2, 3)) * hd**-0.5 + mask
    sinks = P[p + "self_attn.sinks"].reshape(1, -1, 1, 1).expand(B, -1, T, -1)
    if mutate == "no_sinks":
        sinks = torch.full_like(sinks, float("-inf"))
    logits = torch.cat([w, sinks], dim=-1)
    logits = logits - logits.max(dim=-1, keepdim=True).values
    probs = F.softmax(logits, dim=-1, dtype=logits.dtype)[..., :-1]
    out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, -1)
    return lin("o_proj", out)


def mlp(cfg, P, p, x, mutate):
    B, T, d = x.shape
    E, k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    h = x.reshape(-1, d)
    logits = F.linear(h, P[p + "mlp.router.weight"], P[p + "mlp.router.bias"])
    top, idx = torch.topk(logits, k, dim=-1)
    if mutate == "router_softmax_all":
        top = torch.gather(F.softmax(logits, dim=1), 1, idx)
    else:
        top = F.softmax(top, dim=1, dtype=top.dtype)
    scores = torch.zeros_like(logits).scatter_(1, idx, top)  # [N, E]
    W1, b1 = P[p + "mlp.experts.gate_up_proj"], P[p + "mlp.experts.gate_up_proj_bias"]
    W2, b2 = P[p + "mlp.experts.down_proj"], P[p + "mlp.experts.down_proj_bias"]
    hs = h.repeat(E, 1).view(E, -1, d)
    gate_up = torch.bmm(hs, W1) + b1[..., None, :]
    if mutate == "gate_up_halves":
        gate, up = gate_up.chunk(2, dim=-1)
    else:
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    limit, alpha = 7.0, 1.702  # GptOssExperts: self.limit, self.alpha
    gate = gate.clamp(min=None, max=limit)
    up = up.clamp(min=-limit, max=limit)
    glu = gate * torch.sigmoid(gate * alpha)
    out = torch.bmm((up + 1) * glu, W2) + b2[..., None, :]
    out = out.view(E, B, -1, d) * scores.transpose(0, 1).view(E, B, -1)[..., None]
    return out.sum(dim=0)


def forward(cfg, P, tokens, mutate=None):
    B, T = tokens.shape
    eps = cfg["rms_norm_eps"]
    x = P["model.embed_tokens.weight"][tokens]
    cos, sin = rotary(cfg, T)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        sliding = cfg["layer_types"][l] == "sliding_attention"
        x = x + attention(cfg, P, p, rmsnorm(x, P[p + "input_layernorm.weight"], eps), cos, sin, sliding, mutate)
        x = x + mlp(cfg, P, p, rmsnorm(x, P[p + "post_attention_layernorm.weight"], eps), mutate)
    x = rmsnorm(x, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else P["lm_head.weight"]
    return F.linear(x, head)


def rel_error(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("logits", help="moelab's logits (export hf --logits)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |diff| / max |moelab logit|")
    ap.add_argument("--mutate", action="store_true", help="also require deliberate mistakes to be caught")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with open(os.path.join(a.hf_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "gpt_oss" and cfg["architectures"] == ["GptOssForCausalLM"]
    P = read_safetensors(os.path.join(a.hf_dir, "model.safetensors"))
    ref = read_safetensors(a.logits)
    tokens = ref["input.tokens"].long()
    ours = ref["output.logits"]
    with torch.no_grad():
        err = rel_error(forward(cfg, P, tokens).numpy(), ours.numpy())
    ok = err <= a.tol
    print(f"{'ok' if ok else 'FAIL'} {a.hf_dir}: transformers-style forward vs moelab logits, "
          f"relative error {err:.2e} (tolerance {a.tol:.0e})")
    if a.mutate:
        has_sinks = any(bool(torch.isfinite(t).any()) for n, t in P.items() if n.endswith("sinks"))
        mutations = ["gate_up_halves"] + (["no_sinks"] if has_sinks else [])
        mutations += ["router_softmax_all"] if cfg["num_experts_per_tok"] > 1 else []
        for m in mutations:
            with torch.no_grad():
                e = rel_error(forward(cfg, P, tokens, m).numpy(), ours.numpy())
            caught = e > 10 * a.tol
            ok &= caught
            print(f"{'ok' if caught else 'FAIL'}   mutation {m}: relative error {e:.2e} "
                  f"({'caught' if caught else 'NOT caught'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
