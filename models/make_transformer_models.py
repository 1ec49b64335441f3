#!/usr/bin/env python3
"""Writes four tiny transformer fixtures under tests/fixtures/onnx/: tiny-bert, tiny-gpt2,
tiny-t5 and tiny-esm.

Each is a 2-layer, 4-head, hidden-64 model over 16 tokens (batch 1, vocabulary 100) with
random weights from a fixed seed, built node for node the way torch.onnx exports the real
architecture (opset 17), so that the op patterns language and protein models bring along are
exercised end to end, not just convolutions:

- tiny-bert: int64 `input_ids` and `attention_mask` (the last 3 tokens padded); token and
  position Gather, LayerNormalization, the extended attention mask computed in-graph
  (Unsqueeze, Cast, Sub from 1, Mul by -10000, Add to the scores), Softmax, GELU as
  Div/Erf/Add/Mul/Mul; post-norm blocks. Output `last_hidden_state` [1,16,64].
- tiny-gpt2: position ids from Range, the causal mask from ConstantOfShape -> Trilu -> Cast to
  bool -> Where(mask, scores, float32 min); fused QKV split with Split; pre-norm blocks, the tanh
  GELU written out (Pow 3, Mul 0.044715, Add, Mul sqrt(2/pi), Tanh, Add 1, Mul 0.5, Mul); final
  LayerNorm and a tied LM head (MatMul with the transposed token table). Output `logits`
  [1,16,100].
- tiny-t5: RMSNorm written out (Pow 2, ReduceMean over the last axis, Add eps, Sqrt, Div, Mul
  weight), bias-free unscaled attention plus a relative-position bias Gathered from a bucket
  table, Relu FFN, final RMSNorm. Output `last_hidden_state` [1,16,64].
- tiny-esm: ESM-2 pre-norm blocks with rotary embeddings computed in-graph (float Range, Mul by
  inv_freq, Concat(freqs, freqs), Cos, Sin; rotate_half with Slice/Neg/Concat on the last axis),
  a padding mask from Equal(input_ids, 1) (Not, Cast, Where), Erf GELU. Output
  `last_hidden_state` [1,16,64].

The mask and position values could be folded from shapes alone; they are deliberately built
with those ops. Each model passes onnx.checker.check_model(full_check=True), with every
intermediate shape static and stored as value_info.

    pip install onnx onnxruntime numpy && python3 models/make_transformer_models.py

Each fixture is written in the ONNX test-data layout, `<dir>/model.onnx` and
`<dir>/test_data_set_0/input_<i>.pb` (seeded token ids in [0, 100), named after the graph
inputs) and `output_<i>.pb`: the output computed by onnxruntime (CPUExecutionProvider), which
the script checks against onnx.reference.ReferenceEvaluator (max|a-b|/max|a| <= 1e-4) before
writing. Running it twice writes identical bytes.
"""

import os
import sys

import numpy as np
from onnx import TensorProto, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_fixtures import FLOAT_MIN, INT64_MAX, Builder, write_fixture  # noqa: E402

SEQ, HIDDEN, HEADS, LAYERS, VOCAB, FFN = 16, 64, 4, 2, 100, 128
HEAD_DIM = HIDDEN // HEADS
ids_in = ("input_ids", TensorProto.INT64, [1, SEQ])


def split_heads(b, name, x, transpose_k=False):
    """[1,S,H] -> [1,heads,S,d] (or [1,heads,d,S] for K)."""
    r = b.op("Reshape", [x, b.ints(f"{name}.shape", [1, SEQ, HEADS, HEAD_DIM])], name=f"{name}.reshape")
    return b.op("Transpose", [r], name=f"{name}.transpose", perm=[0, 2, 3, 1] if transpose_k else [0, 2, 1, 3])


def merge_heads(b, name, x):
    """[1,heads,S,d] -> [1,S,H]."""
    t = b.op("Transpose", [x], name=f"{name}.transpose", perm=[0, 2, 1, 3])
    return b.op("Reshape", [t, b.ints(f"{name}.shape", [1, SEQ, HIDDEN])], name=f"{name}.reshape")


def attend(b, name, q, kt, v, add=None, mask_where=None, scale=True):
    """softmax(q k^T [/ sqrt(d)] [+ add] [masked]) v, with q [1,h,S,d], kt [1,h,d,S], v [1,h,S,d].

    `add` is (name, tensor) added to the scores; `mask_where` is (keep, fill) for Where."""
    s = b.op("MatMul", [q, kt], name=f"{name}.scores")
    if scale:
        s = b.op("Div", [s, b.const(f"{name}.sqrt_d", np.sqrt(HEAD_DIM))], name=f"{name}.scale")
    if add is not None:
        s = b.op("Add", [s, add[1]], name=f"{name}.{add[0]}")
    if mask_where is not None:
        keep, fill = mask_where
        s = b.op("Where", [keep, s, fill], name=f"{name}.where_mask")
    p = b.op("Softmax", [s], name=f"{name}.softmax", axis=-1)
    return b.op("MatMul", [p, v], name=f"{name}.context")


# -- BERT ------------------------------------------------------------------------------------
def tiny_bert():
    b = Builder("tiny-bert", seed=101)
    word = b.weight("embeddings.word_embeddings.weight", (VOCAB, HIDDEN), 0.1)
    pos_table = b.weight("embeddings.position_embeddings.weight", (SEQ, HIDDEN), 0.1)
    type_table = b.weight("embeddings.token_type_embeddings.weight", (2, HIDDEN), 0.1)
    # BERT keeps position_ids (and, for one segment, token_type_ids) as buffers.
    pos_ids = b.ints("embeddings.position_ids", np.arange(SEQ).reshape(1, SEQ))
    type_ids = b.ints("embeddings.token_type_ids", np.zeros((1, SEQ)))
    x = b.op("Gather", [word, "input_ids"], name="embeddings.word", axis=0)
    x = b.op("Add", [x, b.op("Gather", [type_table, type_ids], name="embeddings.token_type", axis=0)], name="embeddings.add_type")
    x = b.op("Add", [x, b.op("Gather", [pos_table, pos_ids], name="embeddings.position", axis=0)], name="embeddings.add_pos")
    x = b.layer_norm("embeddings.LayerNorm", x, HIDDEN, eps=1e-12)

    # The extended attention mask: (1 - mask[:, None, None, :]) * -10000, shared by all layers.
    m = b.op("Unsqueeze", ["attention_mask", b.ints("mask.axes", [1, 2])], name="mask.unsqueeze")
    m = b.op("Cast", [m], name="mask.cast", to=TensorProto.FLOAT)
    m = b.op("Sub", [b.const("mask.one", 1.0), m], name="mask.sub")
    ext = b.op("Mul", [m, b.const("mask.neg", -10000.0)], name="mask.mul")

    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        q = split_heads(b, f"{p}.q", b.linear(f"{p}.attention.self.query", x, HIDDEN, HIDDEN))
        k = split_heads(b, f"{p}.k", b.linear(f"{p}.attention.self.key", x, HIDDEN, HIDDEN), transpose_k=True)
        v = split_heads(b, f"{p}.v", b.linear(f"{p}.attention.self.value", x, HIDDEN, HIDDEN))
        c = merge_heads(b, f"{p}.ctx", attend(b, f"{p}.attention", q, k, v, add=("add_mask", ext)))
        a = b.linear(f"{p}.attention.output.dense", c, HIDDEN, HIDDEN)
        x = b.layer_norm(f"{p}.attention.output.LayerNorm", b.op("Add", [a, x], name=f"{p}.attention.residual"), HIDDEN, eps=1e-12)
        h = b.gelu_erf(f"{p}.intermediate.gelu", b.linear(f"{p}.intermediate.dense", x, HIDDEN, FFN))
        h = b.linear(f"{p}.output.dense", h, FFN, HIDDEN)
        out = "last_hidden_state" if i == LAYERS - 1 else None
        r = b.op("Add", [h, x], name=f"{p}.output.residual")
        x = b.op(
            "LayerNormalization",
            [r, b.norm_weight(f"{p}.output.LayerNorm.weight", HIDDEN), b.bias(f"{p}.output.LayerNorm.bias", HIDDEN)],
            name=f"{p}.output.LayerNorm", out=out, axis=-1, epsilon=1e-12,
        )

    model = b.finish(
        [ids_in, ("attention_mask", TensorProto.INT64, [1, SEQ])],
        [("last_hidden_state", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
        "BERT-style encoder, random weights (moirai fixture)",
    )
    rng = np.random.default_rng(1001)
    ids = rng.integers(0, VOCAB, (1, SEQ), dtype=np.int64)
    mask = np.ones((1, SEQ), dtype=np.int64)
    mask[0, -3:] = 0  # the last 3 tokens are padding
    ids[0, -3:] = 0  # [PAD]
    return model, {"input_ids": ids, "attention_mask": mask}


# -- GPT-2 -----------------------------------------------------------------------------------
def gelu_tanh(b, name, x):
    """GPT-2's gelu_new: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""
    cube = b.op("Pow", [x, b.const(f"{name}.three", 3.0)], name=f"{name}.pow")
    t = b.op("Mul", [cube, b.const(f"{name}.c", 0.044715)], name=f"{name}.mul_c")
    t = b.op("Add", [x, t], name=f"{name}.add")
    t = b.op("Mul", [t, b.const(f"{name}.sqrt_2_pi", np.sqrt(2.0 / np.pi))], name=f"{name}.mul_sqrt")
    t = b.op("Tanh", [t], name=f"{name}.tanh")
    t = b.op("Add", [t, b.const(f"{name}.one", 1.0)], name=f"{name}.add_one")
    h = b.op("Mul", [x, b.const(f"{name}.half", 0.5)], name=f"{name}.mul_half")
    return b.op("Mul", [h, t], name=f"{name}.mul")


def tiny_gpt2():
    b = Builder("tiny-gpt2", seed=202)
    wte = b.weight("transformer.wte.weight", (VOCAB, HIDDEN), 0.1)
    wpe = b.weight("transformer.wpe.weight", (SEQ, HIDDEN), 0.05)
    pos = b.op(
        "Range",
        [b.ints("pos.start", 0), b.ints("pos.limit", SEQ), b.ints("pos.delta", 1)],
        name="transformer.position_ids",
    )
    pos = b.op("Unsqueeze", [pos, b.ints("pos.axes", [0])], name="transformer.position_ids.unsqueeze")
    x = b.op("Add", [
        b.op("Gather", [wte, "input_ids"], name="transformer.wte", axis=0),
        b.op("Gather", [wpe, pos], name="transformer.wpe", axis=0),
    ], name="transformer.embed")

    # Causal mask: lower triangle of ones -> bool; masked scores become float32 min.
    ones = b.op("ConstantOfShape", [b.ints("causal_mask.shape", [SEQ, SEQ])], name="causal_mask.ones",
                value=numpy_helper.from_array(np.array([1.0], dtype=np.float32)))
    tril = b.op("Trilu", [ones], name="causal_mask.trilu", upper=0)
    keep = b.op("Cast", [tril], name="causal_mask.cast", to=TensorProto.BOOL)
    fill = b.const("causal_mask.min", FLOAT_MIN)

    for i in range(LAYERS):
        p = f"transformer.h.{i}"
        h = b.layer_norm(f"{p}.ln_1", x, HIDDEN)
        qkv = b.linear(f"{p}.attn.c_attn", h, HIDDEN, 3 * HIDDEN)
        q, k, v = b.op("Split", [qkv, b.ints(f"{p}.attn.split", [HIDDEN] * 3)], name=f"{p}.attn.split", outputs=3, axis=2)
        c = attend(b, f"{p}.attn", split_heads(b, f"{p}.q", q), split_heads(b, f"{p}.k", k, transpose_k=True),
                   split_heads(b, f"{p}.v", v), mask_where=(keep, fill))
        a = b.linear(f"{p}.attn.c_proj", merge_heads(b, f"{p}.ctx", c), HIDDEN, HIDDEN)
        x = b.op("Add", [x, a], name=f"{p}.attn.residual")
        h = b.layer_norm(f"{p}.ln_2", x, HIDDEN)
        h = gelu_tanh(b, f"{p}.mlp.act", b.linear(f"{p}.mlp.c_fc", h, HIDDEN, FFN))
        h = b.linear(f"{p}.mlp.c_proj", h, FFN, HIDDEN)
        x = b.op("Add", [x, h], name=f"{p}.mlp.residual")
    x = b.layer_norm("transformer.ln_f", x, HIDDEN)
    head = b.op("Transpose", [wte], name="lm_head.tied", perm=[1, 0])
    b.op("MatMul", [x, head], name="lm_head", out="logits")

    model = b.finish([ids_in], [("logits", TensorProto.FLOAT, [1, SEQ, VOCAB])],
                     "GPT-2-style decoder, one forward pass without a KV cache, random weights (moirai fixture)")
    ids = np.random.default_rng(2002).integers(0, VOCAB, (1, SEQ), dtype=np.int64)
    return model, {"input_ids": ids}


# -- T5 --------------------------------------------------------------------------------------
def rms_norm(b, name, x, out=None):
    """T5LayerNorm: x / sqrt(mean(x^2) + eps) * weight."""
    sq = b.op("Pow", [x, b.const(f"{name}.two", 2.0)], name=f"{name}.pow")
    var = b.op("ReduceMean", [sq], name=f"{name}.mean", axes=[-1], keepdims=1)
    var = b.op("Add", [var, b.const(f"{name}.eps", 1e-6)], name=f"{name}.add_eps")
    rms = b.op("Sqrt", [var], name=f"{name}.sqrt")
    y = b.op("Div", [x, rms], name=f"{name}.div")
    return b.op("Mul", [y, b.norm_weight(f"{name}.weight", HIDDEN)], name=f"{name}.mul", out=out)


def t5_buckets(num_buckets=32, max_distance=128):
    """T5's bidirectional relative-position buckets for SEQ x SEQ, as int64 [SEQ, SEQ]."""
    rel = np.arange(SEQ)[None, :] - np.arange(SEQ)[:, None]  # memory - query
    n = num_buckets // 2
    out = (rel > 0).astype(np.int64) * n
    rel = np.abs(rel)
    exact = n // 2
    large = exact + (np.log(np.maximum(rel, 1) / exact) / np.log(max_distance / exact) * (n - exact)).astype(np.int64)
    large = np.minimum(large, n - 1)
    return out + np.where(rel < exact, rel, large)


def tiny_t5():
    b = Builder("tiny-t5", seed=303)
    shared = b.weight("shared.weight", (VOCAB, HIDDEN), 0.5)
    x = b.op("Gather", [shared, "input_ids"], name="encoder.embed_tokens", axis=0)

    # Relative attention bias, computed once (block 0) and shared: Gather the bucket table with
    # the [S,S] bucket ids -> [S,S,heads] -> [1,heads,S,S].
    table = b.weight("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (32, HEADS), 0.5)
    buckets = b.init("encoder.relative_position_bucket", t5_buckets())
    bias = b.op("Gather", [table, buckets], name="encoder.position_bias.gather", axis=0)
    bias = b.op("Transpose", [bias], name="encoder.position_bias.transpose", perm=[2, 0, 1])
    bias = b.op("Unsqueeze", [bias, b.ints("encoder.position_bias.axes", [0])], name="encoder.position_bias.unsqueeze")

    for i in range(LAYERS):
        p = f"encoder.block.{i}"
        h = rms_norm(b, f"{p}.layer.0.layer_norm", x)
        q = split_heads(b, f"{p}.q", b.linear(f"{p}.layer.0.SelfAttention.q", h, HIDDEN, HIDDEN, scale=0.05, bias=False))
        k = split_heads(b, f"{p}.k", b.linear(f"{p}.layer.0.SelfAttention.k", h, HIDDEN, HIDDEN, scale=0.05, bias=False), transpose_k=True)
        v = split_heads(b, f"{p}.v", b.linear(f"{p}.layer.0.SelfAttention.v", h, HIDDEN, HIDDEN, bias=False))
        # T5 does not scale the scores (the scale is folded into the initialisation).
        c = attend(b, f"{p}.layer.0.SelfAttention", q, k, v, add=("add_position_bias", bias), scale=False)
        a = b.linear(f"{p}.layer.0.SelfAttention.o", merge_heads(b, f"{p}.ctx", c), HIDDEN, HIDDEN, bias=False)
        x = b.op("Add", [x, a], name=f"{p}.layer.0.residual")
        h = rms_norm(b, f"{p}.layer.1.layer_norm", x)
        h = b.op("Relu", [b.linear(f"{p}.layer.1.DenseReluDense.wi", h, HIDDEN, FFN, bias=False)], name=f"{p}.layer.1.DenseReluDense.relu")
        h = b.linear(f"{p}.layer.1.DenseReluDense.wo", h, FFN, HIDDEN, bias=False)
        x = b.op("Add", [x, h], name=f"{p}.layer.1.residual")
    rms_norm(b, "encoder.final_layer_norm", x, out="last_hidden_state")

    model = b.finish([ids_in], [("last_hidden_state", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
                     "T5-style encoder, random weights (moirai fixture)")
    ids = np.random.default_rng(3003).integers(0, VOCAB, (1, SEQ), dtype=np.int64)
    return model, {"input_ids": ids}


# -- ESM-2 -----------------------------------------------------------------------------------
PAD = 1  # ESM's padding_idx


def rotate_half(b, name, x):
    """cat(-x[..., d/2:], x[..., :d/2], -1)."""
    half = HEAD_DIM // 2
    axes = b.ints(f"{name}.axes", [-1])
    x1 = b.op("Slice", [x, b.ints(f"{name}.start1", [0]), b.ints(f"{name}.end1", [half]), axes, b.ints(f"{name}.step1", [1])], name=f"{name}.slice1")
    x2 = b.op("Slice", [x, b.ints(f"{name}.start2", [half]), b.ints(f"{name}.end2", [INT64_MAX]), axes, b.ints(f"{name}.step2", [1])], name=f"{name}.slice2")
    return b.op("Concat", [b.op("Neg", [x2], name=f"{name}.neg"), x1], name=f"{name}.concat", axis=-1)


def rotary(b, name, x, cos, sin):
    """x * cos + rotate_half(x) * sin."""
    a = b.op("Mul", [x, cos], name=f"{name}.mul_cos")
    r = b.op("Mul", [rotate_half(b, f"{name}.rotate_half", x), sin], name=f"{name}.mul_sin")
    return b.op("Add", [a, r], name=f"{name}.add")


def tiny_esm():
    b = Builder("tiny-esm", seed=404)
    word = b.weight("embeddings.word_embeddings.weight", (VOCAB, HIDDEN), 0.5)
    x = b.op("Gather", [word, "input_ids"], name="embeddings.word", axis=0)
    # Padding: zero the padded embeddings, and never attend to padded keys.
    pad = b.op("Equal", ["input_ids", b.ints("pad_mask.pad", PAD)], name="pad_mask.equal")
    keep = b.op("Not", [pad], name="pad_mask.not")
    keepf = b.op("Cast", [keep], name="pad_mask.cast", to=TensorProto.FLOAT)
    keepf = b.op("Unsqueeze", [keepf, b.ints("pad_mask.axes_emb", [-1])], name="pad_mask.unsqueeze_emb")
    x = b.op("Mul", [x, keepf], name="embeddings.zero_pad")
    keep_keys = b.op("Unsqueeze", [keep, b.ints("pad_mask.axes_keys", [1, 2])], name="pad_mask.unsqueeze_keys")
    fill = b.const("pad_mask.min", FLOAT_MIN)

    # Rotary tables: freqs = t[:, None] * inv_freq[None, :]; emb = cat(freqs, freqs).
    inv_freq = b.init("rotary.inv_freq", (1.0 / 10000 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)).astype(np.float32))
    t = b.op("Range", [b.const("rotary.start", 0.0), b.const("rotary.limit", float(SEQ)), b.const("rotary.delta", 1.0)], name="rotary.t")
    t = b.op("Unsqueeze", [t, b.ints("rotary.t_axes", [1])], name="rotary.t_unsqueeze")
    freqs = b.op("Mul", [t, inv_freq], name="rotary.freqs")
    emb = b.op("Concat", [freqs, freqs], name="rotary.emb", axis=-1)
    emb = b.op("Unsqueeze", [emb, b.ints("rotary.emb_axes", [0, 1])], name="rotary.emb_unsqueeze")
    cos = b.op("Cos", [emb], name="rotary.cos")
    sin = b.op("Sin", [emb], name="rotary.sin")

    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        h = b.layer_norm(f"{p}.attention.LayerNorm", x, HIDDEN)
        q = b.linear(f"{p}.attention.self.query", h, HIDDEN, HIDDEN)
        q = b.op("Mul", [q, b.const(f"{p}.attention.self.scaling", HEAD_DIM ** -0.5)], name=f"{p}.attention.self.scale")
        q = rotary(b, f"{p}.attention.rotary_q", split_heads(b, f"{p}.q", q), cos, sin)
        k = rotary(b, f"{p}.attention.rotary_k", split_heads(b, f"{p}.k", b.linear(f"{p}.attention.self.key", h, HIDDEN, HIDDEN)), cos, sin)
        kt = b.op("Transpose", [k], name=f"{p}.k.transpose_t", perm=[0, 1, 3, 2])
        v = split_heads(b, f"{p}.v", b.linear(f"{p}.attention.self.value", h, HIDDEN, HIDDEN))
        c = attend(b, f"{p}.attention", q, kt, v, mask_where=(keep_keys, fill), scale=False)
        a = b.linear(f"{p}.attention.output.dense", merge_heads(b, f"{p}.ctx", c), HIDDEN, HIDDEN)
        x = b.op("Add", [x, a], name=f"{p}.attention.residual")
        h = b.layer_norm(f"{p}.LayerNorm", x, HIDDEN)
        h = b.gelu_erf(f"{p}.intermediate.gelu", b.linear(f"{p}.intermediate.dense", h, HIDDEN, FFN))
        h = b.linear(f"{p}.output.dense", h, FFN, HIDDEN)
        x = b.op("Add", [x, h], name=f"{p}.output.residual")
    b.op(
        "LayerNormalization",
        [x, b.norm_weight("encoder.emb_layer_norm_after.weight", HIDDEN), b.bias("encoder.emb_layer_norm_after.bias", HIDDEN)],
        name="encoder.emb_layer_norm_after", out="last_hidden_state", axis=-1, epsilon=1e-5,
    )

    model = b.finish([ids_in], [("last_hidden_state", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
                     "ESM-2-style protein encoder with rotary embeddings, random weights (moirai fixture)")
    rng = np.random.default_rng(4004)
    ids = rng.integers(4, VOCAB, (1, SEQ), dtype=np.int64)  # ids 0-3 are special tokens in ESM
    ids[0, 0] = 0  # <cls>
    ids[0, -3] = 2  # <eos>
    ids[0, -2:] = PAD
    return model, {"input_ids": ids}


def main():
    reports = [write_fixture(*make()) for make in (tiny_bert, tiny_gpt2, tiny_t5, tiny_esm)]
    print(f"total {sum(r['bytes'] for r in reports)} bytes of models")


if __name__ == "__main__":
    main()
