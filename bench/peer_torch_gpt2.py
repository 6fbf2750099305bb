#!/usr/bin/env python3
"""Peer benchmark: GPT-2 training-step throughput in PyTorch on one CUDA GPU (bf16 autocast).

The GPU counterpart of bench/peer_jax_gpt2.py, run by bench/gpu.sh next to octet's CUDA step (issue
7). The model follows llm.c / nanoGPT conventions, like tools/ref/gpt2_golden.py: learned positions,
Pre-LN blocks (LayerNorm eps 1e-5), fused qkv, causal attention (F.scaled_dot_product_attention, so
flash attention), GELU (tanh), 4x MLP, tied embeddings, vocabulary padded to 50304. Parameters are
f32; the forward and backward run under torch.autocast(bfloat16), the usual PyTorch bf16 recipe.

One training step = forward + cross-entropy + backward + global-norm clip to 1.0 + fused AdamW (lr
6e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices and embeddings). Tokens are uniform
random (no data set to download), drawn on the device before the timed region. The warm-up steps (and
torch.compile's compilation, with --compile) are untimed; each timed step is measured with CUDA events;
the reported time is the median over --steps. MFU = achieved / peak bf16 dense FLOP/s (--peak-tflops,
default 989 for H100/H200 SXM), with nanoGPT's FLOP count 6 N + 12 L T C per token (N = non-embedding
parameters plus the tied head).

Prints one JSON line on stdout. Tested against torch 2.11 (pinned here; the GPU machine has it):
    python3 bench/peer_torch_gpt2.py --batch 16 --seq 1024 --steps 20 [--compile]
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

TORCH_PINNED = "2.11"

MODELS = {  # n_layer, n_head, n_embd
    "gpt2-124m": (12, 12, 768),
    "gpt2-350m": (24, 16, 1024),
    "gpt2-774m": (36, 20, 1280),
}
VOCAB, VOCAB_PADDED, CONTEXT = 50257, 50304, 1024


class Block(nn.Module):
    def __init__(self, c, nh):
        super().__init__()
        self.nh = nh
        self.ln1, self.ln2 = nn.LayerNorm(c, eps=1e-5), nn.LayerNorm(c, eps=1e-5)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc, self.fcproj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, c // self.nh).transpose(1, 2) for z in (q, k, v))  # (B, NH, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, n_layer, n_head, n_embd):
        super().__init__()
        self.wte = nn.Embedding(VOCAB_PADDED, n_embd)
        self.wpe = nn.Embedding(CONTEXT, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.lnf = nn.LayerNorm(n_embd, eps=1e-5)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.lnf(x), self.wte.weight)[..., :VOCAB]  # tied head; padded columns ignored
        return F.cross_entropy(logits.float().view(-1, VOCAB), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-124m", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps (after compilation)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for MFU")
    args = ap.parse_args()
    if not torch.__version__.startswith(TORCH_PINNED):
        print(f"warning: written for torch {TORCH_PINNED}, running {torch.__version__}", flush=True)

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cuda")
    n_layer, n_head, n_embd = MODELS[args.model]
    model = GPT2(n_layer, n_head, n_embd).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True,
    )
    fwd = torch.compile(model) if args.compile else model

    def step(idx, tgt):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def batch():
        idx = torch.randint(0, VOCAB, (args.batch, args.seq + 1), device=dev)
        return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step(*batch())
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()

    times = []
    for _ in range(args.steps):
        idx, tgt = batch()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step(idx, tgt)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    median = sorted(times)[len(times) // 2]
    tokens = args.batch * args.seq
    n_flop = n_params - model.wpe.weight.numel()  # nanoGPT: position embeddings do no matmul FLOPs
    flops_per_token = 6 * n_flop + 12 * n_layer * args.seq * n_embd
    print(json.dumps({
        "peer": "pytorch",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "model": args.model,
        "precision": "bf16-autocast",
        "compile": args.compile,
        "batch": args.batch,
        "seq": args.seq,
        "params": n_params,
        "steps": args.steps,
        "warmup_s": round(warmup_s, 3),
        "step_ms_median": round(median * 1e3, 3),
        "tokens_per_s": round(tokens / median),
        "mfu": round(flops_per_token * tokens / median / (args.peak_tflops * 1e12), 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "final_loss": round(loss.item(), 4),
    }))


if __name__ == "__main__":
    main()
