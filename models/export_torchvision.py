#!/usr/bin/env python3
"""export_torchvision.py OUT NAME...: torchvision models with random weights as ONNX (opset 17),
with an input and onnxruntime's output, in the ONNX test-data layout that `moirai run --input
--reference` and `moirai-agent bench-share` read: OUT/<name>/model.onnx and
OUT/<name>/test_data_set_0/{input_0.pb,output_0.pb}.

The same recipe as ../shared/tools/export_reference.py (BatchNorm statistics calibrated on random
batches so activations neither vanish nor blow up), plus what a transformer export needs: the
fused multi-head-attention fast path is switched off, so ViT exports as MatMul/Softmax nodes,
and layers torchvision initialises to zero (ViT's head) get random weights, or the output would
be all zeros and any comparison would pass.
Multi-megabyte exports are not committed; models/bench_families.sh makes them.

Needs: pip install torch torchvision onnx onnxruntime numpy.
Example: python3 models/export_torchvision.py /tmp/tv efficientnet_b0 vit_b_16
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from onnx import numpy_helper


def calibrate(m, size):
    for mod in m.modules():
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            mod.momentum = None
            mod.reset_running_stats()
    m.train()
    with torch.no_grad():
        for _ in range(8):
            m(torch.randn(4, 3, size, size))
    return m.eval()


def no_zero_weights(m):
    """torchvision zero-initialises some layers (ViT's classifier head): with random weights
    the output would be all zeros and every comparison would pass. Give them random ones."""
    with torch.no_grad():
        for mod in m.modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.nn.Parameter) and w.dim() >= 2 and not w.any():
                w.normal_(0.0, 0.02)
    return m


def export(out, name):
    torch.manual_seed(0)
    m = no_zero_weights(getattr(torchvision.models, name)())
    size = 299 if name.startswith("inception") else 224
    m = calibrate(m, size)
    d = os.path.join(out, name)
    os.makedirs(os.path.join(d, "test_data_set_0"), exist_ok=True)
    path = os.path.join(d, "model.onnx")
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(m, (x,), path, opset_version=17, dynamo=False,
                          input_names=["image"], do_constant_folding=True)
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    data = os.path.join(d, "test_data_set_0")
    with open(os.path.join(data, "input_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(x.numpy(), s.get_inputs()[0].name).SerializeToString())
    with open(os.path.join(data, "output_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(np.asarray(y), s.get_outputs()[0].name).SerializeToString())
    print(f"{name}: {os.path.getsize(path) >> 10} KiB, input {tuple(x.shape)}, output {y.shape}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    # The fused attention kernel has no ONNX export; the plain graph does.
    torch.backends.mha.set_fastpath_enabled(False)
    for n in sys.argv[2:]:
        export(sys.argv[1], n)
