"""The PyTorch peer of `moelab bench train`: the same architecture, config file and timing
(warm-up steps, then timed full training steps: forward, backward, global-norm clipping, AdamW
on random tokens), printing one JSON line. Written as a PyTorch user would write it: nn.Linear,
batched matmuls for attention with the sink as an extra softmax column, experts run on the tokens
routed to them (index_select / index_add_), torch.optim.AdamW."""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, c, sliding):
        super().__init__()
        d, H, KV, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.H, self.KV, self.hd = H, KV, hd
        bias = c.get("attention_bias", True)
        self.qkv = nn.Linear(d, (H + 2 * KV) * hd, bias=bias)
        self.o = nn.Linear(H * hd, d, bias=bias)
        self.sinks = nn.Parameter(torch.zeros(H)) if c.get("attention_sinks", True) else None
        self.window = c.get("sliding_window", 0) if sliding else 0

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        H, KV, hd = self.H, self.KV, self.hd
        q, k, v = self.qkv(x).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = rope(q.view(B, T, H, hd), cos, sin).transpose(1, 2)  # [B, H, T, hd]
        k = rope(k.view(B, T, KV, hd), cos, sin).transpose(1, 2)
        v = v.view(B, T, KV, hd).transpose(1, 2)
        if KV != H:
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd) + mask
        if self.sinks is not None:
            s = torch.cat([s, self.sinks.view(1, H, 1, 1).expand(B, H, T, 1)], dim=-1)
            p = torch.softmax(s, dim=-1)[..., :-1]
        else:
            p = torch.softmax(s, dim=-1)
        return self.o(torch.matmul(p, v).transpose(1, 2).reshape(B, T, H * hd))


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def swiglu(h, limit, alpha=1.702):
    g, l = h[..., ::2], h[..., 1::2]
    if limit > 0:
        g = g.clamp(max=limit)
        l = l.clamp(-limit, limit)
    return g * torch.sigmoid(alpha * g) * (l + 1)


class Experts(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, E, I = c["hidden_size"], c.get("num_local_experts", 1), c["intermediate_size"]
        self.E, self.k = E, c.get("num_experts_per_tok", 1)
        self.limit = c.get("swiglu_limit", 7.0)
        self.router = nn.Linear(d, E) if E > 1 else None
        self.w1 = nn.Parameter(torch.randn(E, d, 2 * I) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(E, 2 * I))
        self.w2 = nn.Parameter(torch.randn(E, I, d) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(E, d))
        self.aux_coef = c.get("router_aux_loss_coef", 0.01)
        self.z_coef = c.get("router_z_loss_coef", 0.001)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.router is None:
            y = swiglu(x @ self.w1[0] + self.b1[0], self.limit) @ self.w2[0] + self.b2[0]
            return y.view(shape), x.new_zeros(())
        logits = self.router(x)
        vals, idx = torch.topk(logits, self.k, dim=-1)
        w = torch.softmax(vals, dim=-1)
        out = torch.zeros_like(x)
        for e in range(self.E):
            tok, slot = torch.where(idx == e)
            if tok.numel() == 0:
                continue
            h = x.index_select(0, tok) @ self.w1[e] + self.b1[e]
            y = swiglu(h, self.limit) @ self.w2[e] + self.b2[e]
            out.index_add_(0, tok, y * w[tok, slot, None])
        probs = torch.softmax(logits, dim=-1)
        f = F.one_hot(idx, self.E).float().sum(1).mean(0) / self.k
        aux = self.aux_coef * self.E * (f * probs.mean(0)).sum()
        z = self.z_coef * torch.logsumexp(logits, -1).pow(2).mean()
        return out.view(shape), aux + z


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, L = c["hidden_size"], c["num_hidden_layers"]
        self.c = c
        window = c.get("sliding_window", 0)
        types = c.get("layer_types") or [
            "sliding_attention" if window > 0 and l % 2 == 0 else "full_attention" for l in range(L)]
        self.emb = nn.Embedding(c["vocab_size"], d)
        self.n1 = nn.ModuleList(RMSNorm(d) for _ in range(L))
        self.att = nn.ModuleList(Attention(c, t == "sliding_attention") for t in types)
        self.n2 = nn.ModuleList(RMSNorm(d) for _ in range(L))
        self.mlp = nn.ModuleList(Experts(c) for _ in range(L))
        self.nf = RMSNorm(d)
        self.head = nn.Linear(d, c["vocab_size"], bias=False)

    def forward(self, tokens, targets, cos, sin, masks):
        x = self.emb(tokens)
        aux = 0.0
        for l in range(len(self.att)):
            x = x + self.att[l](self.n1[l](x), cos, sin, masks[self.att[l].window])
            y, a = self.mlp[l](self.n2[l](x))
            x = x + y
            aux = aux + a / len(self.att)
        logits = self.head(self.nf(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1)) + aux


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.g, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    spec = json.load(open(a.config))
    c, B, T = spec["model"], spec["batch_size"], spec["seq_len"]
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Model(c)
    hd, theta = c["head_dim"], c.get("rope_theta", 150000.0)
    inv = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()
    causal = torch.triu(torch.full((T, T), -float("inf")), diagonal=1)
    masks = {0: causal}
    w = c.get("sliding_window", 0)
    if w > 0:
        masks[w] = causal + torch.tril(torch.full((T, T), -float("inf")), diagonal=-w)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, c["vocab_size"], (B, T), generator=g)
    targets = torch.randint(0, c["vocab_size"], (B, T), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(tokens, targets, cos, sin, masks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    dt = time.perf_counter() - t0
    print(json.dumps({"config": a.config, "peer": "pytorch " + torch.__version__,
                      "threads": torch.get_num_threads(), "batch_size": B, "seq_len": T, "steps": a.steps,
                      "tokens_per_s": round(B * T * a.steps / dt, 1), "step_ms": round(dt / a.steps * 1e3, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "loss": loss}))


if __name__ == "__main__":
    main()
