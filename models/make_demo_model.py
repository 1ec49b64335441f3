#!/usr/bin/env python3
"""Writes models/demo-cnn.onnx, the small CNN `moirai demo` plans.

A stem convolution, two inception-style blocks with parallel branches (so placing the
branches on different boards can pay off), a strided reduction and a classifier head.
Weights are random with a fixed seed: the demo measures and places, it does not classify.

    pip install onnx numpy && python3 models/make_demo_model.py

`--tiny` writes tests/fixtures/onnx/tiny-fleet.onnx instead: the same layout at 16x16 with few
channels, which the fleet integration tests profile in milliseconds.

`--test-data` also writes the ONNX test-data convention next to a copy of the model:
`<dir>/model.onnx`, `<dir>/test_data_set_0/input_0.pb` (a seeded random input) and
`output_0.pb`, the output computed by onnx's own reference evaluator (numpy, independent of
tract), which the distributed-inference tests match. `<dir>` is tests/fixtures/onnx/tiny-cnn
with `--tiny`; otherwise models/demo-cnn, without the model copy: `moirai demo` checks every
answer against that output.
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)
nodes, inits = [], []


def weight(name, shape):
    w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    inits.append(numpy_helper.from_array(w, name))
    return name


def conv(name, x, cin, cout, k, stride=1, relu=True):
    w = weight(f"{name}.w", (cout, cin, k, k))
    b = weight(f"{name}.b", (cout,))
    out = f"{name}.out"
    nodes.append(
        helper.make_node(
            "Conv", [x, w, b], [out if not relu else f"{name}.pre"], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
        )
    )
    if relu:
        nodes.append(helper.make_node("Relu", [f"{name}.pre"], [out], name=f"{name}.relu"))
    return out


def block(name, x, cin, c):
    a = conv(f"{name}.a", x, cin, c, 1)
    b = conv(f"{name}.b1", x, cin, c, 1)
    b = conv(f"{name}.b2", b, c, c, 3)
    d = conv(f"{name}.c1", x, cin, c // 2, 1)
    d = conv(f"{name}.c2", d, c // 2, c, 5)
    out = f"{name}.cat"
    nodes.append(helper.make_node("Concat", [a, b, d], [out], name=out, axis=1))
    return out, 3 * c


TINY = "--tiny" in sys.argv
side, w = (16, 4) if TINY else (128, 32)
x = conv("stem", "input", 3, w, 3, stride=2)  # 1x32x64x64 (demo)
x, c = block("mix1", x, w, w)  # 96 channels
x = conv("reduce", x, c, 4 * w, 3, stride=2)  # 1x128x32x32
x, c = block("mix2", x, 4 * w, 2 * w)  # 192 channels
nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
fc_w = weight("fc.w", (10, c))
fc_b = weight("fc.b", (10,))
nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1))

graph = helper.make_graph(
    nodes,
    "tiny-fleet" if TINY else "demo-cnn",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="moirai")
model.ir_version = 8
onnx.checker.check_model(model)
here = os.path.dirname(os.path.abspath(__file__))
if TINY:
    out = os.path.join(here, "..", "tests", "fixtures", "onnx", "tiny-fleet.onnx")
    os.makedirs(os.path.dirname(out), exist_ok=True)
else:
    out = os.path.join(here, "demo-cnn.onnx")
onnx.save(model, out)
print(f"wrote {out} ({os.path.getsize(out)} bytes, {len(nodes)} nodes)")

if "--test-data" in sys.argv:
    from onnx.reference import ReferenceEvaluator

    d = os.path.join(here, "..", "tests", "fixtures", "onnx", "tiny-cnn") if TINY else os.path.join(here, "demo-cnn")
    data = os.path.join(d, "test_data_set_0")
    os.makedirs(data, exist_ok=True)
    if TINY:
        # The inference tests read the convention's model.onnx; the demo reads
        # models/demo-cnn.onnx and only its test data from here.
        onnx.save(model, os.path.join(d, "model.onnx"))
    x = np.random.default_rng(11).standard_normal((1, 3, side, side)).astype(np.float32)
    (y,) = ReferenceEvaluator(model).run(None, {"input": x})
    onnx.save_tensor(numpy_helper.from_array(x, "input"), os.path.join(data, "input_0.pb"))
    onnx.save_tensor(numpy_helper.from_array(np.asarray(y, dtype=np.float32), "logits"), os.path.join(data, "output_0.pb"))
    print(f"wrote {d}/test_data_set_0 (reference output {np.asarray(y).ravel()[:3]} ...)")
