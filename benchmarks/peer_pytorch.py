#!/usr/bin/python3
"""peer_pytorch.py: a plain PyTorch training loop to measure libedit against.

The same model as `edit-train-gpt --style gpt2` or `--style llama` (src/models/gpt.cpp), the same
llm.c token files read in the same order (src/data/token_dataset.cpp), the same AdamW, schedule and
clipping (tools/edit_train_gpt.cpp, src/train/trainer.cpp), and three ways to keep 2+ ranks together:

  --strategy ddp     torch.distributed (gloo) + DistributedDataParallel, every step
  --strategy diloco  every rank trains alone; every H steps one all_reduce of the pseudo-gradient
                     (anchor - params) and a Nesterov outer step (docs/architecture.md, sync/)
  --strategy streaming  DiLoCo by fragments (Streaming DiLoCo, fp32 exchanges): unit u (embedding,
                     blocks, head) in fragment u mod P, each fragment's exchange H / P steps after
                     the one before, merged --overlap steps after it (include/edit/sync/streaming.h)

Launched by OpenMPI (the rank and size come from OMPI_COMM_WORLD_*), one torch thread per rank:

  OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe --bind-to none /usr/bin/python3 benchmarks/peer_pytorch.py \
      --train-data 'data/fortunes/train_*.bin' --val-data 'data/fortunes/val_*.bin' \
      --dim 128 --layers 4 --heads 4 --seq-len 128 --batch-size 8 --strategy ddp --steps 60

On a GPU (`--device cuda`, one rank) it is the reference for libedit's GPU path
(scripts/gpu-check.sh): bf16 autocast (`--dtype bf16`), torch's fused attention (`--attention sdpa`),
its fused AdamW (`--fused-adamw`) and, with `--compile`, torch.compile's kernel fusion:

  python3 benchmarks/peer_pytorch.py --device cuda --dtype bf16 --attention sdpa --fused-adamw \
      --vocab-size 50304 --seq-len 1024 --dim 768 --heads 12 --layers 12 --batch-size 16 ...

Prints tokens/s (all ranks together, steps after --skip-steps) and the final losses; --csv appends
one row. --check-export FILE (one process, no mpirun) instead evaluates an `edit-export` safetensors
file on libedit's val batches, to show that this model computes what libedit's does.

Needs Debian's python3-torch (1.13: the same libtorch_cpu as libedit's CPU build), and numpy for
--check-export; run it with /usr/bin/python3 (another python on the PATH will not see Debian's
packages).
"""

import argparse
import contextlib
import csv
import glob
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# --- data: llm.c token files, windows and their order as libedit draws them ----------------------

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def read_tokens(patterns, vocab_size):
    """Every file of every pattern (each pattern's matches sorted, as glob(3) gives them), concatenated."""
    parts = []
    for pattern in patterns:
        files = sorted(glob.glob(pattern))
        if not files:
            sys.exit(f"peer_pytorch: no file matches '{pattern}'; run edit-prepare-text first")
        for path in files:
            # Read with torch alone (a GPU machine's python may have no numpy); little-endian hosts.
            with open(path, "rb") as f:
                raw = bytearray(f.read())
            header = torch.frombuffer(raw, dtype=torch.int32, count=HEADER_INTS) if len(raw) >= 4 * HEADER_INTS else []
            if len(header) < HEADER_INTS or header[0] != MAGIC or header[1] != VERSION:
                sys.exit(f"peer_pytorch: {path} is not an llm.c token file (magic {MAGIC}, version {VERSION})")
            body = raw[4 * HEADER_INTS :]
            # uint16 ids: read as int16, then the sign bit taken back.
            tokens = torch.frombuffer(body, dtype=torch.int16).to(torch.int64) & 0xFFFF if body else torch.zeros(0, dtype=torch.int64)
            if tokens.numel() != int(header[2]):
                sys.exit(f"peer_pytorch: {path} holds {tokens.numel()} tokens, its header says {int(header[2])}")
            if tokens.numel() and int(tokens.max()) >= vocab_size:
                sys.exit(f"peer_pytorch: {path} has token id {int(tokens.max())} >= --vocab-size {vocab_size}")
            parts.append(tokens)
    return torch.cat(parts)


def mix(x):
    """splitmix64's output function, as in token_dataset.cpp."""
    x = (x + GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def epoch_permutation(window_count, seed, epoch):
    """The Fisher-Yates permutation of windows 0..count-1 that libedit uses for this epoch."""
    state = mix(seed) ^ mix((epoch + 0x632BE59BD9B4E019) & MASK64)
    permutation = list(range(window_count))
    for i in range(window_count - 1, 0, -1):
        bound = i + 1
        threshold = ((1 << 64) - bound) % bound
        while True:  # unbiased: reject the low values
            state = (state + GOLDEN) & MASK64
            r = mix(state)
            if r >= threshold:
                break
        j = r % bound
        permutation[i], permutation[j] = permutation[j], permutation[i]
    return permutation


class TokenBatches:
    """Non-overlapping windows of seq_len + 1 tokens (split "all"); rank r takes positions r, r + R, ...
    of each epoch's permutation; inputs are a window's first seq_len tokens, targets the next ones."""

    def __init__(self, tokens, seq_len, seed, rank, world):
        self.tokens = tokens  # int64
        self.seq_len, self.seed, self.rank, self.world = seq_len, seed, rank, world
        self.windows = (tokens.numel() - 1) // seq_len
        if self.windows < world:
            sys.exit(f"peer_pytorch: {self.windows} windows of {seq_len + 1} tokens for {world} ranks; need more data")
        self.reset()

    def reset(self):
        self.epoch, self.position, self.order = 0, 0, None

    def _order(self):
        if self.order is None:
            self.order = epoch_permutation(self.windows, self.seed, self.epoch)[self.rank :: self.world]
        return self.order

    def next(self, batch, device="cpu"):  # -> (B, T) inputs, (B, T) targets
        starts = []
        for _ in range(batch):
            if self.position == len(self._order()):
                self.epoch, self.position, self.order = self.epoch + 1, 0, None
            starts.append(self._order()[self.position] * self.seq_len)
            self.position += 1
        index = torch.tensor(starts).unsqueeze(1) + torch.arange(self.seq_len + 1)  # (B, T + 1)
        window = self.tokens[index]
        if device != "cpu":  # up from pinned memory without a wait, as edit-train-gpt does
            window = window.pin_memory().to(device, non_blocking=True)
        return window[:, :-1], window[:, 1:]


# --- model: libedit's GPT, styles gpt2 and llama ---------------------------------------------------


def mlp_hidden(style, dim):
    """GptConfig::hidden(): 4 dim (gpt2), 8/3 dim rounded up to a multiple of 64 (llama)."""
    return 4 * dim if style == "gpt2" else (8 * dim // 3 + 63) // 64 * 64


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) times a weight that starts at 1."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        wide = x.float()
        return (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def norm(style, dim, eps):
    return nn.LayerNorm(dim, eps=eps) if style == "gpt2" else RMSNorm(dim, eps)


class Embedding(nn.Module):
    """Token embedding, plus learned positions for gpt2 (llama rotates q and k instead)."""

    def __init__(self, vocab, seq_len, dim, style):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(seq_len, dim) if style == "gpt2" else None

    def forward(self, ids):  # (B, T) -> (B, T, C)
        x = self.tokens(ids)
        if self.positions is not None:
            x = x + self.positions(torch.arange(ids.size(1), device=ids.device))
        return x


class Block(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then h + mlp(norm2(h)).
    gpt2: LayerNorm, biases, GELU (tanh) MLP. llama: RMSNorm, no biases, RoPE on q and k (each
    head's first half paired with its second half), SwiGLU MLP down(silu(gate(n)) * up(n))."""

    def __init__(self, dim, heads, seq_len, eps, attention, style, rope_theta=10000.0):
        super().__init__()
        self.heads, self.attention, self.style = heads, attention, style
        gpt2 = style == "gpt2"
        hidden = mlp_hidden(style, dim)
        self.norm1 = norm(style, dim, eps)
        self.norm2 = norm(style, dim, eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=gpt2)
        self.out = nn.Linear(dim, dim, bias=gpt2)
        self.gate = None if gpt2 else nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=gpt2)
        self.down = nn.Linear(hidden, dim, bias=gpt2)
        if not gpt2:
            hd = dim // heads
            inv_freq = rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
            angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    def rope(self, x):  # (B, H, T, hd)
        half, T = x.size(-1) // 2, x.size(-2)
        c, s = self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), -1)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        hd = C // self.heads
        q, k, v = (t.reshape(B, T, self.heads, hd).transpose(1, 2) for t in self.qkv(self.norm1(x)).chunk(3, -1))
        if self.style != "gpt2":
            q, k = self.rope(q), self.rope(k)
        if self.attention == "sdpa":  # the fused kernel, as libedit calls it on LibTorch 2.x
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # written out, as libedit does on LibTorch 1.13 (no fused kernel there)
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(hd)  # (B, H, T, T)
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            y = torch.matmul(torch.softmax(scores.masked_fill(future, float("-inf")), -1), v)  # (B, H, T, hd)
        h = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        n = self.norm2(h)
        if self.style == "gpt2":
            return h + self.down(F.gelu(self.up(n), approximate="tanh"))
        return h + self.down(F.silu(self.gate(n)) * self.up(n))


class Head(nn.Module):
    """The final norm and the output projection: the token embedding's (V, C) weight when tied
    (gpt2's default), else one of its own (llama's)."""

    def __init__(self, vocab, dim, eps, style, tied):
        super().__init__()
        self.norm = norm(style, dim, eps)
        self.weight = tied if tied is not None else nn.Parameter(torch.empty(vocab, dim))

    def forward(self, x):  # (B, T, C) -> (B, T, V)
        return F.linear(self.norm(x), self.weight)


class Gpt(nn.Module):
    def __init__(self, vocab, seq_len, dim, heads, layers, eps=1e-5, attention="explicit", style="gpt2", tied=None):
        super().__init__()
        self.layers = layers
        self.tied = style == "gpt2" if tied is None else tied
        self.embed = Embedding(vocab, seq_len, dim, style)
        for i in range(layers):
            self.add_module(f"block{i}", Block(dim, heads, seq_len, eps, attention, style))
        self.head = Head(vocab, dim, eps, style, self.embed.tokens.weight if self.tied else None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        # GPT-2's scheme for both styles: N(0, 0.02) for embeddings, matrices and an untied head,
        # residual projections (out, down) by 1/sqrt(2 layers), zero biases, norms at (1, 0).
        for p in self.embed.parameters():
            p.normal_(0.0, 0.02)
        if not self.tied:
            self.head.weight.normal_(0.0, 0.02)
        for i in range(self.layers):
            for name, p in getattr(self, f"block{i}").named_parameters():
                if "norm" in name:
                    continue
                if p.dim() < 2:
                    p.zero_()
                else:
                    residual = name.startswith("out.") or name.startswith("down.")
                    p.normal_(0.0, 0.02 / math.sqrt(2.0 * self.layers) if residual else 0.02)

    def forward(self, ids):
        x = self.embed(ids)
        for i in range(self.layers):
            x = getattr(self, f"block{i}")(x)
        return self.head(x)

    def loss(self, ids, targets):
        logits = self(ids)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def param_count(module):
    return sum(p.numel() for p in module.parameters())  # a tied weight counts once


def libedit_param_count(vocab, seq_len, dim, layers, style="gpt2", tied=True):
    """GptConfig::num_parameters() (src/models/gpt.cpp), written out here on its own."""
    h = mlp_hidden(style, dim)
    head = 0 if tied else vocab * dim
    if style == "gpt2":
        block = 2 * (2 * dim) + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * h + h) + (h * dim + dim)
        return vocab * dim + seq_len * dim + layers * block + 2 * dim + head
    block = 2 * dim + 4 * dim * dim + 3 * dim * h  # two RMSNorms, q k v o, gate up down
    return vocab * dim + layers * block + dim + head


# --- training -------------------------------------------------------------------------------------


def lr_at(step, a):
    """WarmupCosine (src/shard/lr_schedule.cpp) with edit-train-gpt's warm-up rule."""
    warmup = min(a.warmup_steps, a.steps)
    if step < warmup:
        return a.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, a.steps - warmup))
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1.0 + math.cos(math.pi * progress))


def adamw(model, a):
    # Weight decay on matrices only (FlatAdamW's decay_matrices_only: dim >= 2, embeddings included).
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": a.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {} if a.foreach is None else {"foreach": a.foreach}
    if a.fused_adamw:
        extra["fused"] = True
    return torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=1e-8, **extra)


def pieces(flat, params):
    """(p, the part of the flat vector that is p's, shaped like p) for each of `params` in order."""
    offset = 0
    for p in params:
        yield p, flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


class DiLoCo:
    """Anchor phi and outer momentum m as flat vectors; every H steps:
    Delta = mean_i (phi - theta_i); m = mu m + Delta; phi -= lr (Delta + mu m); theta_i = phi."""

    def __init__(self, params, every, lr, momentum, world):
        self.params, self.every, self.lr, self.momentum, self.world = params, every, lr, momentum, world
        with torch.no_grad():
            self.anchor = torch.cat([p.reshape(-1) for p in params])
        self.velocity = torch.zeros_like(self.anchor)
        self.seconds = 0.0

    @torch.no_grad()
    def after_step(self, step):
        if (step + 1) % self.every:
            return
        start = time.perf_counter()
        delta = self.anchor - torch.cat([p.reshape(-1) for p in self.params])
        if self.world > 1:
            dist.all_reduce(delta)
            delta /= self.world
        self.velocity.mul_(self.momentum).add_(delta)
        self.anchor.add_(delta, alpha=-self.lr).add_(self.velocity, alpha=-self.lr * self.momentum)
        self.reset_to_anchor()
        self.seconds += time.perf_counter() - start

    @torch.no_grad()
    def reset_to_anchor(self):
        for p, phi in pieces(self.anchor, self.params):
            p.copy_(phi)


def model_units(model):
    """The parameters of each of libedit's units: the embedding, each block, the head (a tied
    head's weight is the embedding's, counted there)."""
    units = [list(model.embed.parameters())]
    units += [list(getattr(model, f"block{i}").parameters()) for i in range(model.layers)]
    units.append([p for p in model.head.parameters() if all(p is not q for q in units[0])])
    return units


class StreamingDiLoCo:
    """Written from the schedule in include/edit/sync/streaming.h, not from its code. Fragment p (the
    units u with u mod P = p) issues its exchange after step t when (t + 1) mod H == (p H / P) mod H:
    Delta = mean_i (phi_p - theta_p,i). It is merged after step t + tau: m = mu m + Delta,
    phi_p -= lr (Delta + mu m), theta_p = alpha theta_p + (1 - alpha) phi_p. finish() merges what
    is still in flight."""

    def __init__(self, units, every, fragments, overlap, alpha, lr, momentum, world):
        self.every, self.count, self.overlap, self.alpha = every, fragments, overlap, alpha
        self.lr, self.momentum, self.world = lr, momentum, world
        self.params = [[p for unit in units[f::fragments] for p in unit] for f in range(fragments)]
        with torch.no_grad():
            self.anchor = [torch.cat([p.reshape(-1) for p in ps]) for ps in self.params]
        self.velocity = [torch.zeros_like(a) for a in self.anchor]
        self.in_flight = []  # (merge after step, fragment, mean pseudo-gradient), in issue order
        self.seconds = 0.0

    @torch.no_grad()
    def after_step(self, step):
        start = time.perf_counter()
        while self.in_flight and self.in_flight[0][0] <= step:
            self.merge(*self.in_flight.pop(0)[1:])
        for f in range(self.count):
            if (step + 1) % self.every != f * self.every // self.count % self.every:
                continue
            delta = self.anchor[f] - torch.cat([p.reshape(-1) for p in self.params[f]])
            if self.world > 1:
                dist.all_reduce(delta)
                delta /= self.world
            self.in_flight.append((step + self.overlap, f, delta))
            if self.overlap == 0:
                self.merge(*self.in_flight.pop()[1:])
        self.seconds += time.perf_counter() - start

    @torch.no_grad()
    def merge(self, f, delta):
        self.velocity[f].mul_(self.momentum).add_(delta)
        self.anchor[f].add_(delta, alpha=-self.lr).add_(self.velocity[f], alpha=-self.lr * self.momentum)
        for p, phi in pieces(self.anchor[f], self.params[f]):
            p.mul_(self.alpha).add_(phi, alpha=1.0 - self.alpha)

    def finish(self):
        for _, f, delta in self.in_flight:
            self.merge(f, delta)
        self.in_flight = []

    @torch.no_grad()
    def reset_to_anchor(self):
        for anchor, params in zip(self.anchor, self.params):
            for p, phi in pieces(anchor, params):
                p.copy_(phi)


@torch.no_grad()
def evaluate(model, batches, batch_size, count, device="cpu", autocast=None):
    batches.reset()  # the same val batches every time, as libedit's evaluate()
    total = 0.0
    for _ in range(count):
        with autocast_context(device, autocast):
            total += model.loss(*batches.next(batch_size, device)).item()
    return total / count


def autocast_context(device, dtype):
    """bf16 autocast on `device` (fp32 weights and optimizer, matrix products in bf16, the loss in
    fp32), or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def world_mean(value, world):
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world


def train(a):
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", 0)))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(a.port))
    dist.init_process_group("gloo", rank=rank, world_size=world)

    train_batches = TokenBatches(read_tokens(a.train_data, a.vocab_size), a.seq_len, a.seed, rank, world)
    val_batches = TokenBatches(read_tokens(a.val_data, a.vocab_size), a.seq_len, a.seed, rank, world)

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"peer_pytorch: --device {a.device}, but this torch ({torch.__version__}) sees no CUDA GPU")
    if a.device != "cpu" and world != 1:
        sys.exit(f"peer_pytorch: --device {a.device} runs one rank (the GPU reference); this job has {world}")
    if a.attention == "sdpa" and not hasattr(F, "scaled_dot_product_attention"):
        sys.exit(f"peer_pytorch: --attention sdpa needs torch 2.x; this is {torch.__version__}")
    if a.compile and not hasattr(torch, "compile"):
        sys.exit(f"peer_pytorch: --compile needs torch 2.x; this is {torch.__version__}")
    autocast = torch.bfloat16 if a.dtype == "bf16" else None

    torch.manual_seed(a.seed)
    tied = a.style == "gpt2" if a.tie_embeddings == "auto" else a.tie_embeddings == "on"
    model = Gpt(a.vocab_size, a.seq_len, a.dim, a.heads, a.layers, attention=a.attention, style=a.style,
                tied=tied).to(a.device)
    params = list(model.parameters())
    expected = libedit_param_count(a.vocab_size, a.seq_len, a.dim, a.layers, a.style, tied)
    if param_count(model) != expected:
        sys.exit(f"peer_pytorch: {param_count(model)} parameters, libedit's GptConfig has {expected}")
    with torch.no_grad():  # every replica starts from rank 0's weights (DDP would do it too)
        for p in params if world > 1 else []:
            dist.broadcast(p, 0)
    outer = None
    if a.strategy == "ddp":  # (one rank alone has no gradients to average)
        trained = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
    elif a.strategy == "diloco":
        trained = model
        outer = DiLoCo(params, a.sync_every, a.outer_lr, a.outer_momentum, world)
    else:
        if a.sync_every % a.fragments or a.fragments > a.layers + 2:
            sys.exit(f"peer_pytorch: --fragments {a.fragments} must divide --sync-every and be at most the units")
        trained = model
        outer = StreamingDiLoCo(model_units(model), a.sync_every, a.fragments, a.overlap, a.alpha, a.outer_lr,
                                a.outer_momentum, world)
    optimizer = adamw(model, a)
    # What one step computes: the loss of a batch (torch.compile fuses it, forward and backward).
    step_loss_fn = lambda inputs, targets: F.cross_entropy(  # noqa: E731
        trained(inputs).reshape(-1, a.vocab_size), targets.reshape(-1))
    if a.compile:
        step_loss_fn = torch.compile(step_loss_fn)
    if rank == 0:
        where = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"{torch.get_num_threads()} thread(s)"
        print(f"peer_pytorch: {a.style}, {a.strategy}, {world} ranks, {param_count(model)} parameters (libedit: {expected}), "
              f"torch {torch.__version__}, {a.device} ({where}), {a.dtype}, attention {a.attention}"
              f"{', compiled' if a.compile else ''}", flush=True)

    step_seconds, loss = [], float("nan")
    for step in range(a.steps):
        start = time.perf_counter()
        inputs, targets = train_batches.next(a.batch_size, a.device)
        lr = lr_at(step, a)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=False)  # libedit keeps its flat gradient and zeroes it
        with autocast_context(a.device, autocast):
            step_loss = step_loss_fn(inputs, targets)
        step_loss.backward()
        loss = step_loss.item()
        if not math.isfinite(loss):
            sys.exit(f"peer_pytorch: step {step}: loss {loss} on rank {rank}")
        if a.clip > 0:
            nn.utils.clip_grad_norm_(params, a.clip)
        optimizer.step()
        if outer is not None:
            outer.after_step(step)
        step_seconds.append(time.perf_counter() - start)
        if a.log_every and rank == 0 and (step % a.log_every == 0 or step + 1 == a.steps):
            print(f"step {step:5d}/{a.steps} | loss {loss:.4f} | lr {lr:.2e} | "
                  f"{a.batch_size * a.seq_len * world / step_seconds[-1]:.0f} tok/s", flush=True)

    measured = step_seconds[a.skip_steps :] or [float("nan")]  # none: a run for its start-up cost only
    tokens = len(measured) * a.batch_size * a.seq_len * world
    tokens_per_s = tokens / sum(measured)
    rates = [None] * world
    dist.all_gather_object(rates, tokens_per_s)
    train_loss = world_mean(loss, world)
    if isinstance(outer, StreamingDiLoCo):
        outer.finish()  # the last exchanges land, as libedit's last step does
    if outer is not None and (a.steps % a.sync_every or isinstance(outer, StreamingDiLoCo)):
        outer.reset_to_anchor()  # evaluate the model the replicas agree on, as libedit does
    val_loss = world_mean(evaluate(model, val_batches, a.batch_size, a.eval_batches, a.device, autocast), world)
    sync_s = outer.seconds if outer is not None else float("nan")
    if rank == 0:
        print(f"peer_pytorch: {tokens_per_s:.0f} tokens/s (all ranks; per rank 0's clock: steps {a.skip_steps}-"
              f"{a.steps - 1}, mean step {1e3 * statistics.mean(measured):.1f} ms; each rank's view: "
              f"{', '.join(f'{r:.0f}' for r in rates)}) | final train loss {train_loss:.4f} | val loss {val_loss:.4f}"
              + (f" | outer sync {sync_s:.3f} s" if outer is not None else ""), flush=True)
        if a.csv:
            row = {"impl": "pytorch", "strategy": a.strategy, "sync_every": a.sync_every if outer else "",
                   "ranks": world, "vocab": a.vocab_size, "dim": a.dim, "layers": a.layers, "heads": a.heads,
                   "seq_len": a.seq_len, "batch": a.batch_size, "steps": a.steps, "skip": a.skip_steps,
                   "params": param_count(model), "tokens_per_s": f"{tokens_per_s:.1f}",
                   "mean_step_ms": f"{1e3 * statistics.mean(measured):.2f}", "train_loss": f"{train_loss:.4f}",
                   "val_loss": f"{val_loss:.4f}", "label": a.label, "device": a.device, "dtype": a.dtype,
                   "attention": a.attention, "compiled": int(a.compile), "torch": torch.__version__}
            new = not os.path.exists(a.csv) or os.path.getsize(a.csv) == 0
            with open(a.csv, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
    # Leave without tearing the process group down: torch 1.13 can deadlock there, DDP's Reducer
    # destroying ProcessGroupGloo under the GIL while a gloo worker waits for the GIL to free a
    # tensor (seen once in ~50 runs, after every output was written).
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- --check-export: libedit's exported weights in this model --------------------------------------


def read_safetensors(path):
    import numpy as np  # --check-export only
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        data = f.read()
    types = {"F32": np.float32, "F64": np.float64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=types[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(array.copy())
    return out


@torch.no_grad()
def check_export(a):
    """Loads an edit-export file and prints the val loss libedit's evaluate() computes: eval_batches
    batches per rank for each of --ranks ranks, averaged."""
    config = json.load(open(os.path.join(os.path.dirname(os.path.abspath(a.check_export)), "config.json")))
    style, tied = config["style"], config["tie_embeddings"]
    if config["mlp_hidden"] != mlp_hidden(style, config["dim"]) or config.get("rope_theta", 10000.0) != 10000.0:
        sys.exit("peer_pytorch: --check-export needs the default MLP width and RoPE theta")
    model = Gpt(config["vocab_size"], config["seq_len"], config["dim"], config["heads"], config["layers"],
                config["norm_eps"], style=style, tied=tied)
    tensors = read_safetensors(a.check_export)
    mine = model.state_dict()
    missing = sorted(set(mine) - set(tensors))
    unknown = sorted(set(tensors) - set(mine))
    if missing or unknown:
        sys.exit(f"peer_pytorch: names differ: missing here {missing}, unknown here {unknown}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(mine[name].shape):
            sys.exit(f"peer_pytorch: {name} is {tuple(t.shape)} in the export, {tuple(mine[name].shape)} here")
    model.load_state_dict(tensors)
    exported = sum(t.numel() for name, t in tensors.items() if not (tied and name == "head.weight"))
    tokens = read_tokens(a.val_data, config["vocab_size"])
    losses = [evaluate(model, TokenBatches(tokens, config["seq_len"], a.seed, r, a.ranks), a.batch_size,
                       a.eval_batches) for r in range(a.ranks)]
    print(f"peer_pytorch: export {a.check_export}: {len(tensors)} tensors, {exported} parameters "
          f"(this model: {param_count(model)}, libedit's formula: "
          f"{libedit_param_count(config['vocab_size'], config['seq_len'], config['dim'], config['layers'], style, tied)}); "
          f"val loss here {statistics.mean(losses):.6f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-data", nargs="+", default=["data/fortunes/train_*.bin"], help="llm.c token files (globs)")
    p.add_argument("--val-data", nargs="+", default=["data/fortunes/val_*.bin"], help="llm.c token files (globs)")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--style", choices=["gpt2", "llama"], default="gpt2", help="as edit-train-gpt --style")
    p.add_argument("--tie-embeddings", choices=["auto", "on", "off"], default="auto",
                   help="auto: gpt2 ties the head to the token embedding, llama does not")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per rank per step")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--skip-steps", type=int, default=5, help="warm-up steps left out of tokens/s")
    p.add_argument("--seed", type=int, default=1337, help="data order and init (edit-train-gpt's default)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=50, help="shortened to --steps, as edit-train-gpt does")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--foreach", type=lambda s: s == "on", default=None, metavar="on|off",
                   help="torch AdamW's multi-tensor path (default: torch's choice, off on the CPU in 1.13)")
    p.add_argument("--fused-adamw", action="store_true", help="torch AdamW's fused kernels (fused=True; torch 2.x)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one rank: the reference for libedit's GPU path)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast on the device")
    p.add_argument("--attention", choices=["explicit", "sdpa"], default="explicit",
                   help="explicit: written out (libedit on LibTorch 1.13); sdpa: torch's fused kernel (libedit on 2.x)")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss, forward and backward (torch 2.x)")
    p.add_argument("--strategy", choices=["ddp", "diloco", "streaming"], default="ddp")
    p.add_argument("--fragments", type=int, default=1, help="P for streaming")
    p.add_argument("--overlap", type=int, default=0, help="tau for streaming")
    p.add_argument("--alpha", type=float, default=0.5, help="streaming's merge weight on the worker's own parameters")
    p.add_argument("--sync-every", type=int, default=32, help="H for diloco")
    p.add_argument("--outer-lr", type=float, default=0.7)
    p.add_argument("--outer-momentum", type=float, default=0.9)
    p.add_argument("--eval-batches", type=int, default=8, help="val batches per rank at the end")
    p.add_argument("--log-every", type=int, default=0)
    p.add_argument("--port", type=int, default=29511, help="MASTER_PORT when the environment has none")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--csv", help="append one result row to this CSV file")
    p.add_argument("--label", default="", help="free text for the CSV row")
    p.add_argument("--check-export", metavar="FILE", help="evaluate an edit-export safetensors file and exit")
    p.add_argument("--ranks", type=int, default=2, help="--check-export: the ranks whose val batches to average")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.check_export:
        check_export(a)
    else:
        train(a)


if __name__ == "__main__":
    main()
