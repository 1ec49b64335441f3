#!/usr/bin/env python3
"""Writes five tiny CNN fixtures under tests/fixtures/onnx/: tiny-effnet, tiny-regnet,
tiny-mobilenetv3, tiny-convnext and tiny-vit.

Each takes a 1x3x32x32 float image and returns 10 `logits`, has a few thousand to ~60k random
parameters from a fixed seed (BatchNorm folded into the convolutions: He-style weights and a
bias), and copies the structure of a torchvision model whose patterns trip fused GPU kernels
and graph partitioners, node for node as torch.onnx exports them (opset 17):

- tiny-effnet (EfficientNet/MnasNet): SiLU as Sigmoid + Mul, MBConv blocks (1x1 expand,
  depthwise 3x3 with group = channels, squeeze-excitation GlobalAveragePool -> Conv -> SiLU ->
  Conv -> Sigmoid -> Mul of the [N,C,H,W] map by the [N,C,1,1] gate, 1x1 project, residual Add),
  head Conv, GlobalAveragePool, Flatten, Gemm.
- tiny-regnet (RegNet-Y/ResNeXt): grouped 3x3 convolutions with 1 < group < channels (group 4
  and group 8 at 32 channels, group 8 at 64), SE, residual Add then Relu, a stride-2 block
  with a strided 1x1 projection shortcut.
- tiny-mobilenetv3: HardSwish and HardSigmoid (the ONNX ops; HardSigmoid with PyTorch's
  alpha 1/6), SE gated by HardSigmoid, Relu, a channel Split into unequal parts [8, 16] and a
  Concat on axis 1, a Split on axis 2 (rows) re-joined by a Concat on axis 3 (columns), and
  ReduceMean over axes [2, 3] with keepdims=1 in place of GlobalAveragePool (in one SE and the
  head), classifier Gemm -> HardSwish -> Gemm.
- tiny-convnext: patchify stem and a 2x2 stride-2 downsampling Conv, each with a channels-first
  LayerNorm (Transpose, LayerNormalization, Transpose); blocks of depthwise 7x7 Conv (pads 3),
  Transpose to NHWC, LayerNormalization on the last axis, MatMul+Add, Erf GELU, MatMul+Add,
  layer-scale Mul by a per-channel constant, Transpose back, residual Add.
- tiny-vit: 4x4 stride-4 patch Conv to [1,48,8,8], Reshape + Transpose to 64 tokens, Concat of
  a class token (initializer [1,1,48]) on axis 1, position-embedding Add, 2 pre-norm encoder
  blocks (fused QKV Reshape to [1,65,3,4,12], Transpose, Gather of q/k/v on axis 0, Mul by the
  scale, Softmax, Erf GELU MLP), class token taken with Gather (index 0, axis 1), final
  LayerNorm, Gemm head.

    pip install onnx onnxruntime numpy && python3 models/make_se_cnn_models.py

Each fixture is written in the ONNX test-data layout, `<dir>/model.onnx` and
`<dir>/test_data_set_0/input_0.pb` (a seeded standard-normal image named `input`) and
`output_0.pb` (`logits`): the output computed by onnxruntime (CPUExecutionProvider), which the
script checks against onnx.reference.ReferenceEvaluator (max|a-b|/max|a| <= 1e-4) before
writing. The script also fails if the logits' std leaves [0.1, 10] or an activation blows up,
dies or saturates. Each model passes onnx.checker.check_model(full_check=True), with every
intermediate shape static and stored as value_info. Running it twice writes identical bytes.
"""

import os
import sys

import numpy as np
from onnx import TensorProto

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_fixtures import Builder, write_fixture  # noqa: E402

SIDE, CLASSES = 32, 10
image_in = ("input", TensorProto.FLOAT, [1, 3, SIDE, SIDE])
logits_out = ("logits", TensorProto.FLOAT, [1, CLASSES])


def image(seed):
    return {"input": np.random.default_rng(seed).standard_normal((1, 3, SIDE, SIDE)).astype(np.float32)}


def classifier(b, x, cin, name="classifier", gain=1.0):
    """Flatten then Gemm to the logits (torch's nn.Linear on 2-D)."""
    f = b.op("Flatten", [x], name=f"{name}.flatten", axis=1)
    return gemm(b, name, f, cin, CLASSES, out="logits", gain=gain)


def gemm(b, name, x, cin, cout, out=None, gain=1.0):
    """A Gemm with transB, weights [cout, cin] of std gain/sqrt(cin). Pooled features of a
    random network vary little from image to image, so the heads after pooling take gain > 1
    to keep the logits' spread (and their dependence on the input) near 1."""
    w = b.weight(f"{name}.weight", (cout, cin), gain / np.sqrt(cin))
    return b.op("Gemm", [x, w, b.bias(f"{name}.bias", cout)], name=name, out=out, alpha=1.0, beta=1.0, transB=1)


def se(b, name, x, c, squeeze, act="silu", gate="sigmoid", pool="gap"):
    """Squeeze-excitation: pool to [N,C,1,1], 1x1 Conv, act, 1x1 Conv, gate, Mul with x."""
    if pool == "gap":
        s = b.op("GlobalAveragePool", [x], name=f"{name}.avgpool")
    else:
        s = b.op("ReduceMean", [x], name=f"{name}.avgpool", axes=[2, 3], keepdims=1)
    s = b.conv(f"{name}.fc1", s, c, squeeze, 1)
    s = b.silu(f"{name}.act", s) if act == "silu" else b.op("Relu", [s], name=f"{name}.relu")
    s = b.conv(f"{name}.fc2", s, squeeze, c, 1, gain=2.0)
    if gate == "sigmoid":
        g = b.op("Sigmoid", [s], name=f"{name}.gate")
    else:
        g = b.op("HardSigmoid", [s], name=f"{name}.gate", alpha=1.0 / 6.0, beta=0.5)
    return b.op("Mul", [x, g], name=f"{name}.scale")


# -- EfficientNet ----------------------------------------------------------------------------
def mbconv(b, name, x, cin, cout, expand, stride):
    c = cin * expand
    h = b.silu(f"{name}.expand.act", b.conv(f"{name}.expand", x, cin, c, 1, gain=1.5))
    h = b.silu(f"{name}.dw.act", b.conv(f"{name}.dw", h, c, c, 3, stride=stride, group=c, gain=1.5))
    h = se(b, f"{name}.se", h, c, max(1, cin // 4))
    h = b.conv(f"{name}.project", h, c, cout, 1)
    if stride == 1 and cin == cout:
        h = b.op("Add", [h, x], name=f"{name}.residual")
    return h


def tiny_effnet():
    b = Builder("tiny-effnet", seed=501)
    x = b.silu("stem.act", b.conv("stem", "input", 3, 16, 3, stride=2, gain=1.5))  # 16x16x16
    x = mbconv(b, "blocks.0", x, 16, 16, 4, 1)
    x = mbconv(b, "blocks.1", x, 16, 24, 4, 2)  # 24x8x8
    x = mbconv(b, "blocks.2", x, 24, 24, 4, 1)
    x = b.silu("head.act", b.conv("head", x, 24, 64, 1, gain=1.5))
    x = b.op("GlobalAveragePool", [x], name="avgpool")
    classifier(b, x, 64, gain=3.0)
    return b.finish([image_in], [logits_out], "EfficientNet/MnasNet-style CNN, random weights (moirai fixture)"), image(5001)


# -- RegNet-Y --------------------------------------------------------------------------------
def y_block(b, name, x, cin, cout, group, stride):
    h = b.op("Relu", [b.conv(f"{name}.a", x, cin, cout, 1, gain=1.4)], name=f"{name}.a.relu")
    h = b.op("Relu", [b.conv(f"{name}.b", h, cout, cout, 3, stride=stride, group=group, gain=1.4)], name=f"{name}.b.relu")
    h = se(b, f"{name}.se", h, cout, max(1, cin // 4), act="relu")
    h = b.conv(f"{name}.c", h, cout, cout, 1, gain=0.7)
    short = x if stride == 1 and cin == cout else b.conv(f"{name}.proj", x, cin, cout, 1, stride=stride, pad=0)
    s = b.op("Add", [h, short], name=f"{name}.add")
    return b.op("Relu", [s], name=f"{name}.relu")


def tiny_regnet():
    b = Builder("tiny-regnet", seed=502)
    x = b.op("Relu", [b.conv("stem", "input", 3, 32, 3, stride=2, gain=1.4)], name="stem.relu")  # 32x16x16
    x = y_block(b, "trunk.block1", x, 32, 32, group=4, stride=1)  # group width 8
    x = y_block(b, "trunk.block2", x, 32, 32, group=8, stride=1)  # group width 4
    x = y_block(b, "trunk.block3", x, 32, 64, group=8, stride=2)  # 64x8x8, strided shortcut
    x = b.op("GlobalAveragePool", [x], name="avgpool")
    classifier(b, x, 64, name="fc", gain=2.0)
    return b.finish([image_in], [logits_out], "RegNet-Y/ResNeXt-style CNN, random weights (moirai fixture)"), image(5002)


# -- MobileNetV3 -----------------------------------------------------------------------------
def tiny_mobilenetv3():
    b = Builder("tiny-mobilenetv3", seed=503)
    hs = lambda n, x: b.op("HardSwish", [x], name=n)  # noqa: E731
    x = hs("features.0.act", b.conv("features.0", "input", 3, 16, 3, stride=2, gain=1.5))  # 16x16x16
    # Bneck 1: depthwise 3x3 + Relu, SE (ReduceMean pool, HardSigmoid gate), project, residual.
    h = b.op("Relu", [b.conv("features.1.dw", x, 16, 16, 3, group=16, gain=1.5)], name="features.1.dw.relu")
    h = se(b, "features.1.se", h, 16, 8, act="relu", gate="hard", pool="reduce_mean")
    x = b.op("Add", [b.conv("features.1.project", h, 16, 16, 1), x], name="features.1.residual")
    # Bneck 2: expand + HardSwish, depthwise 3x3 stride 2 + HardSwish, SE (GlobalAveragePool), project.
    h = hs("features.2.expand.act", b.conv("features.2.expand", x, 16, 48, 1, gain=1.5))
    h = hs("features.2.dw.act", b.conv("features.2.dw", h, 48, 48, 3, stride=2, group=48, gain=1.5))
    h = se(b, "features.2.se", h, 48, 16, act="relu", gate="hard")
    x = b.conv("features.2.project", h, 48, 24, 1)  # 24x8x8
    # Unequal channel Split: keep 8 channels, transform 16, Concat back on axis 1.
    keep, rest = b.op("Split", [x, b.ints("features.3.split", [8, 16])], name="features.3.split", outputs=2, axis=1)
    rest = hs("features.3.act", b.conv("features.3.conv", rest, 16, 16, 3, gain=1.5))
    x = b.op("Concat", [keep, rest], name="features.3.concat", axis=1)  # 24x8x8
    # Split the rows in two halves and lay them side by side: [1,24,8,8] -> [1,24,4,16].
    top, bottom = b.op("Split", [x, b.ints("features.4.split", [4, 4])], name="features.4.split_rows", outputs=2, axis=2)
    x = b.op("Concat", [top, bottom], name="features.4.concat_cols", axis=3)
    x = hs("features.5.act", b.conv("features.5", x, 24, 64, 1, gain=1.5))  # 64x4x16
    x = b.op("ReduceMean", [x], name="avgpool", axes=[2, 3], keepdims=1)
    f = b.op("Flatten", [x], name="flatten", axis=1)
    h = hs("classifier.act", gemm(b, "classifier.0", f, 64, 32, gain=2.0))
    gemm(b, "classifier.3", h, 32, CLASSES, out="logits", gain=3.0)
    return b.finish([image_in], [logits_out], "MobileNetV3-style CNN, random weights (moirai fixture)"), image(5003)


# -- ConvNeXt --------------------------------------------------------------------------------
def layer_norm_2d(b, name, x, c):
    """LayerNorm over channels of an NCHW map: Transpose to NHWC, LayerNormalization, back."""
    t = b.op("Transpose", [x], name=f"{name}.to_nhwc", perm=[0, 2, 3, 1])
    t = b.layer_norm(name, t, c, eps=1e-6)
    return b.op("Transpose", [t], name=f"{name}.to_nchw", perm=[0, 3, 1, 2])


def cnblock(b, name, x, c):
    h = b.conv(f"{name}.dwconv", x, c, c, 7, group=c, pad=3, gain=1.5)
    h = b.op("Transpose", [h], name=f"{name}.to_nhwc", perm=[0, 2, 3, 1])
    h = b.layer_norm(f"{name}.norm", h, c, eps=1e-6)
    h = b.linear(f"{name}.pwconv1", h, c, 4 * c, scale=1.0 / np.sqrt(c))
    h = b.gelu_erf(f"{name}.gelu", h)
    h = b.linear(f"{name}.pwconv2", h, 4 * c, c, scale=1.0 / np.sqrt(4 * c))
    gamma = b.init(f"{name}.layer_scale", b.rng.uniform(0.2, 1.0, c).astype(np.float32))
    h = b.op("Mul", [h, gamma], name=f"{name}.layer_scale")
    h = b.op("Transpose", [h], name=f"{name}.to_nchw", perm=[0, 3, 1, 2])
    return b.op("Add", [h, x], name=f"{name}.residual")


def tiny_convnext():
    b = Builder("tiny-convnext", seed=504)
    x = b.conv("features.0.conv", "input", 3, 32, 4, stride=4, pad=0, gain=1.5)  # 32x8x8
    x = layer_norm_2d(b, "features.0.norm", x, 32)
    x = cnblock(b, "features.1.0", x, 32)
    x = layer_norm_2d(b, "features.2.norm", x, 32)
    x = b.conv("features.2.conv", x, 32, 64, 2, stride=2, pad=0)  # 64x4x4
    x = cnblock(b, "features.3.0", x, 64)
    x = b.op("GlobalAveragePool", [x], name="avgpool")
    x = layer_norm_2d(b, "classifier.norm", x, 64)
    classifier(b, x, 64, name="classifier.fc")
    return b.finish([image_in], [logits_out], "ConvNeXt-style CNN, random weights (moirai fixture)"), image(5004)


# -- ViT -------------------------------------------------------------------------------------
DIM, HEADS, PATCH = 48, 4, 4
TOKENS = (SIDE // PATCH) ** 2 + 1


def vit_block(b, name, x):
    hd = DIM // HEADS
    h = b.layer_norm(f"{name}.norm1", x, DIM, eps=1e-6)
    qkv = b.linear(f"{name}.attn.qkv", h, DIM, 3 * DIM, scale=1.0 / np.sqrt(DIM))
    qkv = b.op("Reshape", [qkv, b.ints(f"{name}.attn.qkv_shape", [1, TOKENS, 3, HEADS, hd])], name=f"{name}.attn.reshape")
    qkv = b.op("Transpose", [qkv], name=f"{name}.attn.permute", perm=[2, 0, 3, 1, 4])  # [3,1,h,T,d]
    q, k, v = (b.op("Gather", [qkv, b.ints(f"{name}.attn.{n}_index", i)], name=f"{name}.attn.{n}", axis=0)
               for i, n in enumerate("qkv"))
    q = b.op("Mul", [q, b.const(f"{name}.attn.scale_value", hd ** -0.5)], name=f"{name}.attn.scale")
    kt = b.op("Transpose", [k], name=f"{name}.attn.k_t", perm=[0, 1, 3, 2])
    s = b.op("MatMul", [q, kt], name=f"{name}.attn.scores")
    p = b.op("Softmax", [s], name=f"{name}.attn.softmax", axis=-1)
    c = b.op("MatMul", [p, v], name=f"{name}.attn.context")
    c = b.op("Transpose", [c], name=f"{name}.attn.merge", perm=[0, 2, 1, 3])
    c = b.op("Reshape", [c, b.ints(f"{name}.attn.out_shape", [1, TOKENS, DIM])], name=f"{name}.attn.merge_reshape")
    x = b.op("Add", [x, b.linear(f"{name}.attn.proj", c, DIM, DIM, scale=1.0 / np.sqrt(DIM))], name=f"{name}.attn.residual")
    h = b.layer_norm(f"{name}.norm2", x, DIM, eps=1e-6)
    h = b.gelu_erf(f"{name}.mlp.act", b.linear(f"{name}.mlp.fc1", h, DIM, 2 * DIM, scale=1.0 / np.sqrt(DIM)))
    h = b.linear(f"{name}.mlp.fc2", h, 2 * DIM, DIM, scale=1.0 / np.sqrt(2 * DIM))
    return b.op("Add", [x, h], name=f"{name}.mlp.residual")


def tiny_vit():
    b = Builder("tiny-vit", seed=505)
    x = b.conv("conv_proj", "input", 3, DIM, PATCH, stride=PATCH, pad=0)  # [1,48,8,8]
    x = b.op("Reshape", [x, b.ints("tokens.shape", [1, DIM, TOKENS - 1])], name="tokens.flatten")
    x = b.op("Transpose", [x], name="tokens.permute", perm=[0, 2, 1])  # [1,64,48]
    cls = b.weight("class_token", (1, 1, DIM), 0.5)
    x = b.op("Concat", [cls, x], name="tokens.concat_class", axis=1)  # [1,65,48]
    x = b.op("Add", [x, b.weight("encoder.pos_embedding", (1, TOKENS, DIM), 0.2)], name="encoder.add_pos")
    for i in range(2):
        x = vit_block(b, f"encoder.layers.{i}", x)
    x = b.layer_norm("encoder.ln", x, DIM, eps=1e-6)
    x = b.op("Gather", [x, b.ints("class_index", 0)], name="heads.class_token", axis=1)  # [1,48]
    gemm(b, "heads.head", x, DIM, CLASSES, out="logits")
    return b.finish([image_in], [logits_out], "ViT-style image transformer, random weights (moirai fixture)"), image(5005)


def main():
    makers = (tiny_effnet, tiny_regnet, tiny_mobilenetv3, tiny_convnext, tiny_vit)
    reports = [write_fixture(*make()) for make in makers]
    print(f"total {sum(r['bytes'] for r in reports)} bytes of models")


if __name__ == "__main__":
    main()
