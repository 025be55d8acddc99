"""The same architecture in PyTorch, written from docs/methods.md §3 and the gpt-oss reference code
(attention with sinks as an extra softmax column, half-split RoPE with YaRN, interleaved SwiGLU with
clamps, top-k router with softmax over the selected logits). Test-time reference only."""
import json
import math
import struct

import numpy as np
import torch

_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def load_safetensors(path):
    """Reads a safetensors file with numpy only; returns (tensors, metadata)."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        arr = np.frombuffer(data[8 + hlen + a : 8 + hlen + b], dtype=_DTYPES[t["dtype"]])
        out[name] = arr.reshape(t["shape"]).copy()
    return out, meta


def rope_tables(cfg, seq, dtype):
    hd = cfg["head_dim"]
    theta = cfg["rope_theta"]
    freq = theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    scaling = cfg.get("rope_scaling")
    if scaling:
        s = scaling["factor"]
        L0 = scaling["original_max_position_embeddings"]
        alpha, beta = scaling["beta_slow"], scaling["beta_fast"]
        concentration = 0.1 * math.log(s) + 1.0
        d_half = hd / 2
        low = d_half * math.log(L0 / (beta * 2 * math.pi)) / math.log(theta)
        high = d_half * math.log(L0 / (alpha * 2 * math.pi)) / math.log(theta)
        interpolation = 1.0 / (s * freq)
        extrapolation = 1.0 / freq
        ramp = (torch.arange(d_half, dtype=torch.float64) - low) / (high - low)
        mask = 1 - ramp.clamp(0, 1)
        inv_freq = interpolation * (1 - mask) + extrapolation * mask
    else:
        concentration = 1.0
        inv_freq = 1.0 / freq
    t = torch.arange(seq, dtype=torch.float64)
    ang = torch.einsum("i,j->ij", t, inv_freq)
    return (ang.cos() * concentration).to(dtype), (ang.sin() * concentration).to(dtype)


def apply_rope(x, cos, sin):
    # x [B, T, heads, hd]; half-split pairs (i, i + hd/2)
    x1, x2 = torch.chunk(x, 2, dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def rmsnorm(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def sdpa(Q, K, V, S, scale, window):
    # Q [T, KV, q_mult, hd], K/V [T, KV, hd], S [H] or None (gpt-oss torch/model.py)
    T, n_kv, q_mult, hd = Q.shape
    K = K[:, :, None, :].expand(-1, -1, q_mult, -1)
    V = V[:, :, None, :].expand(-1, -1, q_mult, -1)
    mask = torch.triu(Q.new_full((T, T), -float("inf")), diagonal=1)
    if window > 0:
        mask = mask + torch.tril(mask.new_full((T, T), -float("inf")), diagonal=-window)
    QK = torch.einsum("qhmd,khmd->hmqk", Q, K) * scale + mask[None, None]
    if S is not None:
        Sx = S.reshape(n_kv, q_mult, 1, 1).expand(-1, -1, T, -1)
        W = torch.softmax(torch.cat([QK, Sx], dim=-1), dim=-1)[..., :-1]
    else:
        W = torch.softmax(QK, dim=-1)
    return torch.einsum("hmqk,khmd->qhmd", W, V).reshape(T, -1)


def swiglu(h, limit, alpha):
    g, l = h[..., ::2], h[..., 1::2]
    if limit > 0:
        g = g.clamp(max=limit)
        l = l.clamp(min=-limit, max=limit)
    return g * torch.sigmoid(alpha * g) * (l + 1)


def forward(cfg, P, tokens, targets):
    """P: dict name -> tensor (HF GptOss names). Returns logits, lm loss, aux loss, z loss."""
    B, T = tokens.shape
    d, H, KV, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    E, k, I = cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"]
    moe = cfg["ffn_type"] == "moe"
    eps = cfg["rms_norm_eps"]
    dtype = P["model.embed_tokens.weight"].dtype
    cos, sin = rope_tables(cfg, T, dtype)
    x = P["model.embed_tokens.weight"][tokens]  # [B, T, d]
    aux = torch.zeros((), dtype=torch.float64)
    zl = torch.zeros((), dtype=torch.float64)
    L = cfg["num_hidden_layers"]
    for l in range(L):
        p = f"model.layers.{l}."
        window = cfg["sliding_window"] if cfg["layer_types"][l] == "sliding_attention" else 0
        t = rmsnorm(x, P[p + "input_layernorm.weight"], eps)

        def lin(name, inp):
            w = P[p + f"self_attn.{name}.weight"]
            b = P.get(p + f"self_attn.{name}.bias")
            return torch.nn.functional.linear(inp, w, b)

        q = lin("q_proj", t).view(B, T, H, hd)
        kk = lin("k_proj", t).view(B, T, KV, hd)
        v = lin("v_proj", t).view(B, T, KV, hd)
        q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
        sinks = P.get(p + "self_attn.sinks")
        att = torch.stack(
            [sdpa(q[b].view(T, KV, H // KV, hd), kk[b], v[b], sinks, 1.0 / math.sqrt(hd), window) for b in range(B)]
        )
        x = x + lin("o_proj", att)
        t = rmsnorm(x, P[p + "post_attention_layernorm.weight"], eps).reshape(B * T, d)
        W1, b1 = P[p + "mlp.experts.gate_up_proj"], P[p + "mlp.experts.gate_up_proj_bias"]
        W2, b2 = P[p + "mlp.experts.down_proj"], P[p + "mlp.experts.down_proj_bias"]
        if moe and E > 1:
            logits = torch.nn.functional.linear(t, P[p + "mlp.router.weight"], P[p + "mlp.router.bias"])
            vals, idx = torch.topk(logits, k, dim=-1, sorted=True)
            w = torch.softmax(vals, dim=-1)
            h = torch.einsum("nd,nkdo->nko", t, W1[idx]) + b1[idx]
            y = torch.einsum("nki,nkio->nko", swiglu(h, cfg["swiglu_limit"], cfg["swiglu_alpha"]), W2[idx]) + b2[idx]
            out = (w[..., None] * y).sum(1)
            # Switch load balancing (f = share of the N*k assignments, P = mean router probability)
            probs = torch.softmax(logits.double(), dim=-1)
            f = torch.nn.functional.one_hot(idx, E).double().sum(1).mean(0) / k
            aux = aux + cfg["router_aux_loss_coef"] * E * (f * probs.mean(0)).sum() / L
            zl = zl + cfg["router_z_loss_coef"] * torch.logsumexp(logits.double(), -1).pow(2).mean() / L
        else:
            h = t @ W1[0] + b1[0]
            out = swiglu(h, cfg["swiglu_limit"], cfg["swiglu_alpha"]) @ W2[0] + b2[0]
        x = x + out.view(B, T, d)
    x = rmsnorm(x, P["model.norm.weight"], eps)
    head = P.get("lm_head.weight", P["model.embed_tokens.weight"])
    logits = torch.nn.functional.linear(x, head)
    lm = torch.nn.functional.cross_entropy(logits.view(B * T, -1), targets.view(-1).long(), ignore_index=-1)
    return logits, lm, aux, zl
