#!/usr/bin/env python3
"""The tiny GGUF fixture of crates/nn/tests/gguf_reference.rs and its reference values (issue 14).

Regenerate (needs torch, transformers, gguf, tokenizers, safetensors, numpy; produced with
torch 2.15.0, transformers 5.24.0, gguf-py 0.19.0, tokenizers 0.23.3):

    python crates/nn/tests/reference/make_gguf_reference.py
    cargo test --release -p autodidact-nn --test gguf_reference

Writes into crates/nn/tests/fixtures/:
  tiny_llama.gguf            a llama GGUF as llama.cpp's converter writes one: hidden 64, 4 heads /
                             2 key/value heads, ffn 256, 3 layers (one per K-quant on an ffn_down),
                             tied embeddings, rope theta 100000, q/k rows permuted; a byte-level BPE
                             (trained here with `tokenizers` on varied text, digits split one by one:
                             pre-tokenizer `smollm`) with <|endoftext|>, <|im_start|>, <|im_end|> as
                             control tokens, add_bos_token, and SmolLM2's ChatML template. Its tensors
                             use every ggml type the importer dequantizes: F32 (norms), F16, BF16,
                             Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (by gguf-py's quantizers) and Q4_K, Q5_K, Q6_K
                             (packed here by a simple quantizer, ggml's block layouts; gguf-py has
                             no K-quant quantizer).
  tiny_llama_reference.safetensors
      logits.<i> (T, V), ids.<i> (T)   transformers' logits for the three prompts, loading the GGUF with
                                       AutoModelForCausalLM.from_pretrained(..., gguf_file=..., float32)
      blocks.<TYPE>, values.<TYPE>     random blocks of every type (sane f16 scales) and gguf-py's
                                       `gguf.quants.dequantize` of them: the Rust dequantizer is
                                       checked bit for bit on every bit pattern
  tiny_llama_reference.json
      tensors: per GGUF tensor, gguf-py's dequantized values (checksum of the f32 bits + samples)
      params:  per Hugging Face parameter of transformers' model (after its q/k un-permutation), same
      tokens:  a few hundred edge-case strings: ids without and with special tokens, decode
      chats:   conversations rendered by the chat template (text and ids)

transformers 5.24 reads a GGUF's `smollm` pre-tokenizer as plain GPT-2 (it does not split digits
one by one), unlike the tokenizer the vocabulary was trained with (and SmolLM2's own tokenizer.json,
and llama.cpp). The reference tokenizer is transformers' GGUF tokenizer with that pre-tokenizer put
back, checked here against the trained tokenizer on every case; where stock transformers differs,
its ids are recorded as `stock_transformers_ids` (not checked by the Rust test).
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

import gguf
from gguf import GGMLQuantizationType as T
from tokenizers import Tokenizer, decoders, models, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_cases  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "fixtures")
NAME = "tiny_llama.gguf"

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, CTX = 64, 4, 2, 256, 3, 128
HEAD_DIM = HIDDEN // HEADS
VOCAB = 352
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, PAD = 0, 2, 0
RMS_EPS = 1e-5
ROPE_THETA = 100000.0
# SmolLM2-135M-Instruct's template, as its GGUF carries it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The ggml type of every matrix; norms are F32.
TYPES = {
    "token_embd.weight": T.Q4_1,
    "blk.0.attn_q.weight": T.F16,
    "blk.0.attn_k.weight": T.BF16,
    "blk.0.attn_v.weight": T.Q8_0,
    "blk.0.attn_output.weight": T.Q4_0,
    "blk.0.ffn_gate.weight": T.Q4_1,
    "blk.0.ffn_up.weight": T.Q5_0,
    "blk.0.ffn_down.weight": T.Q4_K,
    "blk.1.attn_q.weight": T.Q5_1,
    "blk.1.attn_k.weight": T.F16,
    "blk.1.attn_v.weight": T.Q5_0,
    "blk.1.attn_output.weight": T.BF16,
    "blk.1.ffn_gate.weight": T.Q4_0,
    "blk.1.ffn_up.weight": T.Q5_1,
    "blk.1.ffn_down.weight": T.Q5_K,
    "blk.2.attn_q.weight": T.Q4_0,
    "blk.2.attn_k.weight": T.Q5_1,
    "blk.2.attn_v.weight": T.Q4_1,
    "blk.2.attn_output.weight": T.Q8_0,
    "blk.2.ffn_gate.weight": T.Q5_0,
    "blk.2.ffn_up.weight": T.Q4_1,
    "blk.2.ffn_down.weight": T.Q6_K,
}

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. It's a sunny day, isn't it? We're going out.",
    "I've seen the results; they're good, and we'll publish them. She'd like that, I'm sure.",
    "Numbers: 12345, 3.14159, 2024-06-01, 1,000,000 and 42. Room 101 is on the 3rd floor.",
    "def main():\n    for i in range(10):\n        print(i)\n    return 0\n\nif __name__ == '__main__':\n    main()\n",
    "fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n\t// tabs\tand\tspaces\n",
    "Caf\u00e9, na\u00efve, Z\u00fcrich, cr\u00e8me br\u00fbl\u00e9e. \u00bfQu\u00e9 tal? \u00a1Muy bien!",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002\ud55c\uad6d\uc5b4 \u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "Emoji \U0001F600 \U0001F44D\U0001F3FD \u2764\ufe0f and \U0001F468\u200d\U0001F469\u200d\U0001F467 family.",
    "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\nHi! How can I help you today?<|im_end|>\n",
    "Hello, world!  Hello,   world!\nHello\r\nworld... --- *** ??? !!!",
    "the the the and and and of of to to in in is is it it that that with with for for",
] * 20


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = gguf_cases.smollm_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    assert len(vocab) == VOCAB, len(vocab)
    tokens = [None] * VOCAB
    for t, i in vocab.items():
        tokens[i] = t
    assert tokens[:3] == SPECIAL, tokens[:3]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    assert any(m.startswith("\u0120 \u0120") or m == "\u0120 \u0120" for m in merges), "no 'Ġ Ġ' merge"
    return tok, tokens, merges


# ---- K-quant packing (ggml's block_q4_K, block_q5_K, block_q6_K) ----

def f16(x):
    return np.asarray(x, dtype=np.float16)


def pack_scales_k4(sc, m):
    """12 bytes holding eight 6-bit scales and mins (ggml's get_scale_min_k4 layout)."""
    q = np.zeros(12, dtype=np.uint8)
    for j in range(4):
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6)
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6)
        q[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4)
    return q


def quantize_qk(x, bits):
    """One 256-value block as Q4_K (bits 4) or Q5_K (bits 5): y = d*sc*q - dmin*m."""
    levels = (1 << bits) - 1
    sub = x.reshape(8, 32)
    lo = np.minimum(sub.min(axis=1), 0.0)
    hi = sub.max(axis=1)
    scale = (hi - lo) / levels
    mins = -lo
    d = f16(scale.max() / 63 if scale.max() > 0 else 1.0)
    dmin = f16(mins.max() / 63 if mins.max() > 0 else 1.0)
    sc = np.clip(np.round(scale / np.float32(d)), 0, 63).astype(np.uint8)
    m = np.clip(np.round(mins / np.float32(dmin)), 0, 63).astype(np.uint8)
    q = np.zeros((8, 32), dtype=np.uint8)
    for j in range(8):
        step = np.float32(d) * np.float32(sc[j])
        if step > 0:
            q[j] = np.clip(np.round((sub[j] + np.float32(dmin) * np.float32(m[j])) / step), 0, levels)
    qs = np.zeros(128, dtype=np.uint8)
    for c in range(4):
        qs[c * 32:(c + 1) * 32] = (q[2 * c] & 0x0F) | ((q[2 * c + 1] & 0x0F) << 4)
    head = np.concatenate([d.reshape(1).view(np.uint8), dmin.reshape(1).view(np.uint8), pack_scales_k4(sc, m)])
    if bits == 4:
        return np.concatenate([head, qs])
    qh = np.zeros(32, dtype=np.uint8)
    for j in range(8):
        qh |= ((q[j] >> 4) & 1) << j
    return np.concatenate([head, qh, qs])


def quantize_q6k(x, rng):
    """One 256-value block as Q6_K: y = d*sc*(q-32), sc signed (signs drawn at random)."""
    sub = x.reshape(16, 16)
    amax = np.abs(sub).max(axis=1)
    scale = amax / 31
    sign = np.where(rng.random(16) < 0.3, -1.0, 1.0)
    d = f16(scale.max() / 127 if scale.max() > 0 else 1.0)
    sc = np.clip(np.round(sign * scale / np.float32(d)), -127, 127).astype(np.int8)
    L = np.zeros((16, 16), dtype=np.int32)
    for j in range(16):
        step = np.float32(d) * np.float32(sc[j])
        if step != 0:
            L[j] = np.clip(np.round(sub[j] / step), -32, 31)
    L = (L + 32).reshape(256).astype(np.uint8)
    ql = np.zeros(128, dtype=np.uint8)
    qh = np.zeros(64, dtype=np.uint8)
    for n in range(2):
        j = n * 128
        for l in range(32):
            q1, q2, q3, q4 = L[j + l], L[j + l + 32], L[j + l + 64], L[j + l + 96]
            ql[n * 64 + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            ql[n * 64 + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            qh[n * 32 + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(1).view(np.uint8)])


def quantize(x, qtype, rng):
    """(rows, cols) float32 -> what GGUFWriter stores for `qtype`."""
    if qtype == T.F32:
        return x.astype(np.float32)
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        rows, cols = x.shape
        blocks = x.reshape(-1, 256)
        if qtype == T.Q6_K:
            packed = [quantize_q6k(b, rng) for b in blocks]
        else:
            packed = [quantize_qk(b, 4 if qtype == T.Q4_K else 5) for b in blocks]
        out = np.stack(packed).reshape(rows, -1)
        # The packing is checked against gguf-py's dequantizer: close to what was packed.
        back = gguf.quants.dequantize(out, qtype)
        err = np.abs(back - x).max() / np.abs(x).max()
        assert err < 0.2, (qtype, err)
        return out
    return gguf.quants.quantize(x, qtype)


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute for q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_blocks(qtype, rng, n_blocks=6):
    """Random bytes in blocks of `qtype` with sane f16 scales, and gguf-py's dequantization."""
    per, size = gguf.constants.GGML_QUANT_SIZES[qtype]
    if qtype in (T.F32, T.F16, T.BF16):
        vals = (rng.standard_normal(64) * np.exp(rng.uniform(-8, 8, 64))).astype(np.float32)
        vals[:4] = [0.0, -0.0, 1.0, -2.5]
        raw = gguf.quants.quantize(vals, qtype) if qtype != T.F32 else vals
        raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    else:
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        f16_at = {T.Q4_0: [0], T.Q5_0: [0], T.Q8_0: [0], T.Q4_1: [0, 2], T.Q5_1: [0, 2],
                  T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}[qtype]
        for b in range(n_blocks):
            for off in f16_at:
                v = f16(rng.choice([-1, 1]) * np.exp(rng.uniform(-9, 0)))
                raw[b, off:off + 2] = v.reshape(1).view(np.uint8)
        raw = raw.reshape(-1)
    values = gguf.quants.dequantize(raw.copy(), qtype).astype(np.float32).reshape(-1)
    return raw, values


def main():
    rng = np.random.default_rng(14)
    os.makedirs(FIXTURES, exist_ok=True)
    trained, tokens, merges = train_tokenizer()

    # ---- weights, as Hugging Face names them ----
    hf = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN)) * 0.3,
          "model.norm.weight": 1.0 + 0.2 * rng.standard_normal(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        hf[p + "input_layernorm.weight"] = 1.0 + 0.2 * rng.standard_normal(HIDDEN)
        hf[p + "post_attention_layernorm.weight"] = 1.0 + 0.2 * rng.standard_normal(HIDDEN)
        hf[p + "self_attn.q_proj.weight"] = rng.standard_normal((HIDDEN, HIDDEN)) * 0.25
        hf[p + "self_attn.k_proj.weight"] = rng.standard_normal((KV_HEADS * HEAD_DIM, HIDDEN)) * 0.25
        hf[p + "self_attn.v_proj.weight"] = rng.standard_normal((KV_HEADS * HEAD_DIM, HIDDEN)) * 0.15
        hf[p + "self_attn.o_proj.weight"] = rng.standard_normal((HIDDEN, HIDDEN)) * 0.15
        hf[p + "mlp.gate_proj.weight"] = rng.standard_normal((FFN, HIDDEN)) * 0.15
        hf[p + "mlp.up_proj.weight"] = rng.standard_normal((FFN, HIDDEN)) * 0.15
        hf[p + "mlp.down_proj.weight"] = rng.standard_normal((HIDDEN, FFN)) * 0.08
    hf = {k: v.astype(np.float32) for k, v in hf.items()}

    def gguf_name(name):
        fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
        if name in fixed:
            return fixed[name]
        _, _, layer, rest = name.split(".", 3)
        part = {
            "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
            "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
            "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
            "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
            "mlp.down_proj.weight": "ffn_down.weight",
        }[rest]
        return f"blk.{layer}.{part}"

    # ---- the GGUF ----
    path = os.path.join(FIXTURES, NAME)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("autodidact tiny llama (issue 14 fixture)")
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_pad_token_id(PAD)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)
    gguf_tensors = {}
    for name, value in hf.items():
        gname = gguf_name(name)
        if name.endswith("q_proj.weight"):
            value = permute(value, HEADS)
        elif name.endswith("k_proj.weight"):
            value = permute(value, KV_HEADS)
        qtype = TYPES.get(gname, T.F32)
        data = quantize(value, qtype, rng)
        if qtype == T.F32 or qtype == T.F16:
            w.add_tensor(gname, data)
        else:
            w.add_tensor(gname, data, raw_dtype=qtype)
        gguf_tensors[gname] = qtype
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path}: {os.path.getsize(path)} bytes, types {sorted({t.name for t in gguf_tensors.values()})}")

    # ---- dequantized tensors, by gguf-py, from the file as written ----
    reader = gguf.GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        idx = gguf_cases.sample_indices(values.size)
        tensors[t.name] = {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape)],
            "checksum": str(gguf_cases.checksum(values)),
            "sample_index": idx,
            "sample": [float(values[i]) for i in idx],
        }

    # ---- transformers ----
    model = AutoModelForCausalLM.from_pretrained(FIXTURES, gguf_file=NAME, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings, model.config
    params = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        values = p.detach().float().numpy().reshape(-1)
        idx = gguf_cases.sample_indices(values.size)
        params[name] = {
            "checksum": str(gguf_cases.checksum(values)),
            "sample_index": idx,
            "sample": [float(values[i]) for i in idx],
        }

    stock = AutoTokenizer.from_pretrained(FIXTURES, gguf_file=NAME)
    tok = AutoTokenizer.from_pretrained(FIXTURES, gguf_file=NAME)
    tok.backend_tokenizer.pre_tokenizer = gguf_cases.smollm_pre_tokenizer()
    texts = gguf_cases.edge_cases()
    cases = gguf_cases.tokenizer_cases(tok, texts, lambda s: stock(s, add_special_tokens=False)["input_ids"])
    # The reference equals the tokenizer the vocabulary was trained with.
    for c in cases:
        assert trained.encode(c["text"]).ids == c["ids"], c
    differs = [c["text"] for c in cases if "stock_transformers_ids" in c]
    print(f"{len(cases)} tokenization cases; stock transformers differs on {len(differs)}: {differs[:8]!r}")
    chats = gguf_cases.chat_cases(tok)

    prompts = [
        tok("Hello world! It's 2024, the caf\u00e9's open.")["input_ids"],
        tok.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi! 12+3?"}],
            tokenize=False, add_generation_prompt=True),
        tok("def f(x):\n    return x  # \u65e5\u672c\U0001F600")["input_ids"],
    ]
    prompts[1] = tok(prompts[1], add_special_tokens=False)["input_ids"]
    ref = {}
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            logits = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
            ref[f"ids.{i}"] = np.array(ids, dtype=np.int64)
            ref[f"logits.{i}"] = np.ascontiguousarray(logits, dtype=np.float32)
            print(f"prompt {i}: {len(ids)} tokens, logits max |x| {np.abs(logits).max():.3f}")

    for qtype in [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]:
        raw, values = random_blocks(qtype, rng)
        assert np.isfinite(values).all(), qtype
        ref[f"blocks.{qtype.name}"] = raw
        ref[f"values.{qtype.name}"] = values

    save_file(ref, os.path.join(FIXTURES, "tiny_llama_reference.safetensors"))
    import transformers
    doc = {
        "produced_by": f"make_gguf_reference.py (transformers {transformers.__version__}, torch {torch.__version__}, "
                       f"tokenizers {__import__('tokenizers').__version__})",
        "tensors": tensors,
        "params": params,
        "tokens": cases,
        "chats": chats,
    }
    with open(os.path.join(FIXTURES, "tiny_llama_reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    for n in ["tiny_llama.gguf", "tiny_llama_reference.safetensors", "tiny_llama_reference.json"]:
        print(f"{n}: {os.path.getsize(os.path.join(FIXTURES, n))} bytes")


if __name__ == "__main__":
    main()
