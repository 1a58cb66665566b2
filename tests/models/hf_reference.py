#!/usr/bin/python3
"""Checks an `edit-export --format hf` folder against libedit's own logits.

    hf_reference.py EXPORT_DIR LOGITS.safetensors [--rtol 1e-4]

The forward passes of transformers' GPT2LMHeadModel and LlamaForCausalLM are written here from
Hugging Face's layout and config.json fields alone (the tensor names and shapes transformers
loads, Conv1D's x @ W + b, gelu_new, rotate_half RoPE from rope_theta, LlamaRMSNorm, the head
tied to the embedding when lm_head.weight is absent), in float64, without libedit's names or
code. transformers itself is not installed where the tests run; this stands in for it.

LOGITS.safetensors holds "tokens" (B, T) and "logits" (B, T, V) from libedit's forward
(tests/models/gpt_logits_main.cpp). Passes when max |difference| <= rtol * max(1, max |logit|).
A negative control runs too: the same forward with one attention projection transposed must miss
that bound, so the comparison is shown able to fail. Exit 0: agree; 1: differ or the folder is
malformed; 77: no torch in this interpreter.
"""
import argparse
import json
import math
import os
import struct
import sys

try:
    import torch
except ImportError:
    print(f"edit-test-skipped: {sys.executable} cannot import torch; install Debian's python3-torch")
    sys.exit(77)

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def read_safetensors(path):
    """The safetensors format: u64 little-endian header size, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    metadata = header.pop("__metadata__", {})
    body = data[8 + size:]
    tensors, spans = {}, []
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        count = math.prod(entry["shape"])
        if end - begin != count * torch.tensor([], dtype=dtype).element_size():
            raise ValueError(f"{path}: {name} has {end - begin} bytes for shape {entry['shape']}")
        raw = bytearray(body[begin:end])
        flat = torch.frombuffer(raw, dtype=dtype) if count else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(entry["shape"]).clone()
        spans.append((begin, end))
    spans.sort()
    at = 0
    for begin, end in spans:  # the data is packed: no gap, no overlap, nothing after the last tensor
        if begin != at:
            raise ValueError(f"{path}: data offsets leave a gap or overlap at byte {at}")
        at = end
    if at != len(body):
        raise ValueError(f"{path}: {len(body) - at} bytes after the last tensor")
    return tensors, metadata


class Weights:
    """The file's tensors in float64; remembers which were used, so that a tensor transformers would
    not load (an unexpected key, which it ignores) is an error here, as is a missing one (which it
    would initialise at random)."""

    def __init__(self, tensors):
        self.tensors = {name: t.to(torch.float64) for name, t in tensors.items()}
        self.used = set()

    def __getitem__(self, name):
        if name not in self.tensors:
            raise KeyError(f"model.safetensors has no {name}, which transformers expects")
        self.used.add(name)
        return self.tensors[name]

    def __contains__(self, name):
        return name in self.tensors

    def shaped(self, name, shape):
        t = self[name]
        if list(t.shape) != list(shape):
            raise ValueError(f"{name} has shape {list(t.shape)}, transformers expects {list(shape)}")
        return t

    def unused(self):
        return sorted(set(self.tensors) - self.used)


def causal_softmax_attention(q, k, v):
    """(B, H, T, d) each -> (B, H, T, d): softmax(q k^T / sqrt(d)) v over positions <= t."""
    t = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as torch.nn.LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu_new(x):  # transformers' NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt2_logits(w, cfg, ids):
    """GPT2LMHeadModel: pre-LayerNorm blocks, Conv1D layers (weight stored (in, out))."""
    e, heads, layers = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    inner = cfg.get("n_inner") or 4 * e
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    vocab, positions = cfg["vocab_size"], cfg["n_positions"]
    if cfg.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"activation_function {cfg['activation_function']}; this reference knows gelu_new")
    if not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError("only scale_attn_weights true and no inverse-layer scaling are modelled here")
    b, t = ids.shape

    def ln(x, name):
        return layer_norm(x, w.shaped(name + ".weight", [e]), w.shaped(name + ".bias", [e]), eps)

    def conv1d(x, name, n_in, n_out):
        return x @ w.shaped(name + ".weight", [n_in, n_out]) + w.shaped(name + ".bias", [n_out])

    wte = w.shaped("transformer.wte.weight", [vocab, e])
    x = wte[ids] + w.shaped("transformer.wpe.weight", [positions, e])[torch.arange(t)]
    for i in range(layers):
        p = f"transformer.h.{i}."
        q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn", e, 3 * e).split(e, dim=2)
        split = lambda m: m.view(b, t, heads, e // heads).permute(0, 2, 1, 3)  # noqa: E731
        y = causal_softmax_attention(split(q), split(k), split(v)).permute(0, 2, 1, 3).reshape(b, t, e)
        x = x + conv1d(y, p + "attn.c_proj", e, e)
        h = gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc", e, inner))
        x = x + conv1d(h, p + "mlp.c_proj", inner, e)
    x = ln(x, "transformer.ln_f")
    return x @ head_weight(w, cfg, "transformer.wte.weight", wte, default_tied=True).T


def head_weight(w, cfg, embedding_name, embedding, default_tied):
    """lm_head.weight, or the token embedding when the config ties them (then the file must not
    carry a head of its own: transformers would drop it silently)."""
    if cfg.get("tie_word_embeddings", default_tied):
        if "lm_head.weight" in w:
            raise ValueError(f"tie_word_embeddings is true but lm_head.weight is stored; it would be "
                             f"replaced by {embedding_name}")
        return embedding
    return w.shaped("lm_head.weight", list(embedding.shape))


def llama_logits(w, cfg, ids):
    """LlamaForCausalLM: RMSNorm, rotate_half RoPE, SwiGLU, bias-free projections."""
    e, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or e // heads
    inner, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    if cfg.get("hidden_act", "silu") != "silu" or cfg.get("rope_scaling"):
        raise ValueError("this reference models hidden_act silu without rope_scaling")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError("this reference models attention_bias and mlp_bias false")
    b, t = ids.shape

    def rms_norm(x, name):  # LlamaRMSNorm: x * rsqrt(mean(x^2) + eps), then times the weight
        return w.shaped(name + ".weight", [e]) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def linear(x, name, n_in, n_out):  # nn.Linear: weight (out, in)
        return x @ w.shaped(name + ".weight", [n_out, n_in]).T

    # LlamaRotaryEmbedding: inv_freq over even indices, cos/sin of (position x inv_freq) repeated
    # for both halves; rotate_half pairs dimension i with i + hd/2.
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(m):
        return torch.cat((-m[..., hd // 2:], m[..., : hd // 2]), dim=-1)

    embed = w.shaped("model.embed_tokens.weight", [vocab, e])
    x = embed[ids]
    for i in range(layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, p + "input_layernorm")
        q = linear(h, p + "self_attn.q_proj", e, heads * hd).view(b, t, heads, hd).transpose(1, 2)
        k = linear(h, p + "self_attn.k_proj", e, kv_heads * hd).view(b, t, kv_heads, hd).transpose(1, 2)
        v = linear(h, p + "self_attn.v_proj", e, kv_heads * hd).view(b, t, kv_heads, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
        y = causal_softmax_attention(q, k, v).transpose(1, 2).reshape(b, t, heads * hd)
        x = x + linear(y, p + "self_attn.o_proj", heads * hd, e)
        h = rms_norm(x, p + "post_attention_layernorm")
        gate = linear(h, p + "mlp.gate_proj", e, inner)
        x = x + linear(torch.nn.functional.silu(gate) * linear(h, p + "mlp.up_proj", e, inner),
                       p + "mlp.down_proj", inner, e)
    x = rms_norm(x, "model.norm")
    return x @ head_weight(w, cfg, "model.embed_tokens.weight", embed, default_tied=False).T


FORWARDS = {"GPT2LMHeadModel": ("gpt2", gpt2_logits), "LlamaForCausalLM": ("llama", llama_logits)}
CONTROL = {"gpt2": "transformer.h.0.attn.c_proj.weight", "llama": "model.layers.0.self_attn.o_proj.weight"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("logits")
    parser.add_argument("--rtol", type=float, default=1e-4, help="bound on max |difference| / max(1, max |logit|)")
    args = parser.parse_args()

    with open(os.path.join(args.export_dir, "config.json")) as f:
        cfg = json.load(f)
    architecture = (cfg.get("architectures") or ["?"])[0]
    if architecture not in FORWARDS or cfg.get("model_type") != FORWARDS[architecture][0]:
        raise SystemExit(f"FAIL: architectures {cfg.get('architectures')} / model_type {cfg.get('model_type')} "
                         f"is neither GPT2LMHeadModel/gpt2 nor LlamaForCausalLM/llama")
    if cfg.get("torch_dtype") != "float32":
        raise SystemExit(f"FAIL: torch_dtype {cfg.get('torch_dtype')}, the tensors are float32")
    model_type, forward = FORWARDS[architecture]
    tensors, metadata = read_safetensors(os.path.join(args.export_dir, "model.safetensors"))
    if metadata.get("format") != "pt":  # transformers refuses a safetensors file without it
        raise SystemExit(f"FAIL: model.safetensors metadata {metadata} lacks format: pt")
    if any(t.dtype != torch.float32 for t in tensors.values()):
        raise SystemExit("FAIL: model.safetensors holds tensors that are not float32")
    expected, _ = read_safetensors(args.logits)
    ids, ours = expected["tokens"], expected["logits"].to(torch.float64)

    weights = Weights(tensors)
    with torch.no_grad():
        reference = forward(weights, cfg, ids)
    if weights.unused():
        raise SystemExit(f"FAIL: model.safetensors holds tensors transformers would not load: {weights.unused()}")
    if reference.shape != ours.shape:
        raise SystemExit(f"FAIL: logits shape {list(reference.shape)} here, {list(ours.shape)} from libedit")
    scale = max(1.0, ours.abs().max().item())
    bound = args.rtol * scale
    diff = (reference - ours).abs().max().item()
    print(f"hf_reference: {architecture} tie_word_embeddings={cfg.get('tie_word_embeddings')} "
          f"{len(tensors)} tensors, logits {list(ours.shape)}: max |difference| {diff:.3e} "
          f"(logit scale {scale:.3f}, bound {bound:.3e})")
    if not diff <= bound:
        raise SystemExit(f"FAIL: {architecture} from the Hugging Face layout differs from libedit's logits")

    # Negative control: a layout mistake of the kind this test exists for must exceed the bound.
    control = CONTROL[model_type]
    broken = Weights(tensors)
    broken.tensors[control] = broken.tensors[control].T.contiguous()
    with torch.no_grad():
        miss = (forward(broken, cfg, ids) - ours).abs().max().item()
    print(f"hf_reference: control with {control} transposed: max |difference| {miss:.3e}")
    if not miss > bound:
        raise SystemExit("FAIL: the comparison does not see a transposed projection; the bound is too loose")
    print("hf_reference: OK")


if __name__ == "__main__":
    try:
        main()
    except (KeyError, ValueError) as e:
        raise SystemExit(f"FAIL: {e}")
