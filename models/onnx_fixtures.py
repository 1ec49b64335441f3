"""Shared helpers for the fixture generators (make_transformer_models.py, make_se_cnn_models.py).

Not a script: the generators import it from this directory. A `Builder` collects nodes and
seeded random initializers for one onnx.helper graph; `finish` runs strict shape inference,
requires every value's shape to be static and stores those shapes as value_info; `write_fixture`
computes the reference output with onnxruntime (CPU) and with onnx.reference.ReferenceEvaluator,
fails when they disagree by more than 1e-4 relative, checks that no activation blows up or
saturates, and writes the ONNX test-data layout:

    <dir>/model.onnx
    <dir>/test_data_set_0/input_<i>.pb   (TensorProto named after graph input i)
    <dir>/test_data_set_0/output_<i>.pb  (onnxruntime's output i)
"""

import collections
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
TOLERANCE = 1e-4
INT64_MAX = np.iinfo(np.int64).max
FLOAT_MIN = float(np.finfo(np.float32).min)

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "onnx")


class Builder:
    """One graph: nodes in order, initializers, seeded weights, unique names."""

    def __init__(self, name, seed):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.used = set()
        self.counts = collections.Counter()

    def _unique(self, base):
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    # -- constants ---------------------------------------------------------------------------
    def init(self, name, array):
        """An initializer holding `array` (its dtype is kept)."""
        name = self._unique(name)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name, shape, scale):
        return self.init(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def norm_weight(self, name, dim):
        """A norm's gain, near 1."""
        return self.init(name, (1.0 + 0.1 * self.rng.standard_normal(dim)).astype(np.float32))

    def bias(self, name, dim, scale=0.02):
        return self.weight(name, (dim,), scale)

    def const(self, name, value, dtype=np.float32):
        """A Constant node (as torch.onnx exports them), so the value is computed in-graph."""
        out = self._unique(name)
        t = numpy_helper.from_array(np.asarray(value, dtype=dtype), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=t))
        return out

    def ints(self, name, values):
        return self.const(name, values, np.int64)

    # -- nodes -------------------------------------------------------------------------------
    def op(self, op_type, inputs, name=None, outputs=1, out=None, **attrs):
        """Appends one node; returns its output name (or a list when outputs > 1).

        `out` names the (single) output, e.g. a graph output; otherwise outputs are named after
        the node."""
        node = self._unique(name or f"{self.name}.{op_type}")
        if out is not None:
            self.used.add(out)
            outs = [out]
        elif outputs == 1:
            outs = [self._unique(f"{node}.out")]
        else:
            outs = [self._unique(f"{node}.out{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node, **attrs))
        return outs[0] if outputs == 1 else outs

    # -- building blocks ---------------------------------------------------------------------
    def linear(self, name, x, cin, cout, scale=0.1, bias=True):
        """x @ W (+ b), W [cin, cout]: MatMul then Add, the way torch exports nn.Linear on 3-D."""
        y = self.op("MatMul", [x, self.weight(f"{name}.weight", (cin, cout), scale)], name=f"{name}.matmul")
        if bias:
            y = self.op("Add", [y, self.bias(f"{name}.bias", cout)], name=f"{name}.add")
        return y

    def layer_norm(self, name, x, dim, axis=-1, eps=1e-5):
        return self.op(
            "LayerNormalization",
            [x, self.norm_weight(f"{name}.weight", dim), self.bias(f"{name}.bias", dim)],
            name=name, axis=axis, epsilon=eps,
        )

    def gelu_erf(self, name, x):
        """0.5 * x * (1 + erf(x / sqrt(2))), node for node as torch.onnx exports nn.GELU()."""
        d = self.op("Div", [x, self.const(f"{name}.sqrt2", np.sqrt(2.0))], name=f"{name}.div")
        e = self.op("Erf", [d], name=f"{name}.erf")
        a = self.op("Add", [e, self.const(f"{name}.one", 1.0)], name=f"{name}.add")
        m = self.op("Mul", [x, a], name=f"{name}.mul")
        return self.op("Mul", [m, self.const(f"{name}.half", 0.5)], name=f"{name}.mul_half")

    def conv(self, name, x, cin, cout, k, stride=1, group=1, pad=None, gain=1.0, bias=True):
        """A Conv with BatchNorm folded in: He-style weights (std gain/sqrt(fan_in)) and a bias."""
        fan_in = cin // group * k * k
        w = self.weight(f"{name}.weight", (cout, cin // group, k, k), gain / np.sqrt(fan_in))
        ins = [x, w] + ([self.bias(f"{name}.bias", cout, 0.05)] if bias else [])
        p = k // 2 if pad is None else pad
        return self.op(
            "Conv", ins, name=name, kernel_shape=[k, k], strides=[stride, stride], pads=[p] * 4,
            group=group, dilations=[1, 1],
        )

    def silu(self, name, x):
        """x * sigmoid(x), as torch.onnx exports nn.SiLU at opset 17."""
        s = self.op("Sigmoid", [x], name=f"{name}.sigmoid")
        return self.op("Mul", [x, s], name=f"{name}.mul")

    # -- the model ---------------------------------------------------------------------------
    def finish(self, inputs, outputs, doc):
        """The checked model: `inputs`/`outputs` are (name, TensorProto dtype, shape)."""
        graph = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
            [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="moirai")
        model.ir_version = IR_VERSION
        model.doc_string = doc
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        known = {v.name: v for v in inferred.graph.value_info}
        graph_outputs = {o.name for o in model.graph.output}
        value_info = []
        for node in model.graph.node:
            for o in node.output:
                if o in graph_outputs:
                    continue
                if o not in known:
                    raise SystemExit(f"{self.name}: no shape inferred for {o} ({node.op_type} {node.name})")
                v = known[o]
                t = v.type.tensor_type
                if not t.HasField("shape") or any(not d.HasField("dim_value") for d in t.shape.dim):
                    raise SystemExit(f"{self.name}: {o} ({node.op_type} {node.name}) has a non-static shape: {t.shape}")
                value_info.append(v)
        for o in inferred.graph.output:
            want = next(x for x in outputs if x[0] == o.name)[2]
            got = [d.dim_value for d in o.type.tensor_type.shape.dim]
            if got != list(want):
                raise SystemExit(f"{self.name}: output {o.name} inferred as {got}, declared {want}")
        model.graph.value_info.extend(value_info)
        onnx.checker.check_model(model, full_check=True)
        return model


def summary(model):
    """Op types with counts, sorted by name."""
    c = collections.Counter(n.op_type for n in model.graph.node)
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items()))


def _ort_session(model, optimize=True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


SATURATING = {"Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0), "Erf": (-1.0, 1.0)}


def check_activations(model, feeds):
    """Fails when an intermediate is non-finite, huge (outside mask arithmetic), all-saturated
    (Sigmoid/HardSigmoid/Tanh/Erf), dead (Relu) or one-hot everywhere (Softmax). Returns a line."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    vi = {v.name: v for v in probe.graph.value_info}
    kind, names = {}, []
    for n in probe.graph.node:
        for o in n.output:
            if o in vi and vi[o].type.tensor_type.elem_type == TensorProto.FLOAT:
                kind[o] = (n.op_type, n.name)
                names.append(o)
                probe.graph.output.append(vi[o])
    sess = _ort_session(probe, optimize=False)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    worst_abs, worst_sat = 0.0, 0.0
    for o in names:
        v = values[o]
        op, node = kind[o]
        if not np.all(np.isfinite(v)):
            raise SystemExit(f"{model.graph.name}: {node} ({op}) is not finite")
        if "mask" in node:
            continue  # -10000 / float-min mask arithmetic is meant to be large
        m = float(np.max(np.abs(v)))
        if m > 1e3:
            raise SystemExit(f"{model.graph.name}: {node} ({op}) reaches |x| = {m:.3g}")
        if op != "Constant":
            worst_abs = max(worst_abs, m)
        if op in SATURATING:
            lo, hi = SATURATING[op]
            sat = float(np.mean((v < lo + 1e-3) | (v > hi - 1e-3)))
            worst_sat = max(worst_sat, sat)
            if sat > 0.9:
                raise SystemExit(f"{model.graph.name}: {node} ({op}) is {sat:.0%} saturated")
        if op == "Relu" and np.mean(v > 0) < 0.05:
            raise SystemExit(f"{model.graph.name}: {node} (Relu) is {np.mean(v > 0):.0%} alive")
        if op == "Softmax" and np.mean(np.max(v, axis=-1)) > 0.98:
            raise SystemExit(f"{model.graph.name}: {node} (Softmax) is one-hot")
    return f"max |activation| {worst_abs:.3g}, worst saturation {worst_sat:.0%}"


def write_fixture(model, feeds):
    """Reference outputs (onnxruntime, checked against onnx's ReferenceEvaluator) and the
    test-data layout under tests/fixtures/onnx/<graph name>/. Returns a report dict."""
    from onnx.reference import ReferenceEvaluator

    name = model.graph.name
    out_names = [o.name for o in model.graph.output]
    ort_out = _ort_session(model).run(out_names, feeds)
    ref_out = ReferenceEvaluator(model).run(out_names, feeds)
    diffs = []
    for n, a, b in zip(out_names, ort_out, ref_out):
        a, b = np.asarray(a), np.asarray(b, dtype=a.dtype)
        if a.shape != b.shape:
            raise SystemExit(f"{name}: {n} is {a.shape} in onnxruntime, {b.shape} in the reference")
        diff = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
        diffs.append(diff)
        if not diff <= TOLERANCE:
            raise SystemExit(f"{name}: {n}: onnxruntime and the reference evaluator differ by {diff:.3g} (> {TOLERANCE})")
        std = float(np.std(a))
        if not 0.1 <= std <= 10.0:
            raise SystemExit(f"{name}: {n} has std {std:.3g}, outside [0.1, 10]")
    acts = check_activations(model, feeds)

    d = os.path.join(FIXTURES, name)
    data = os.path.join(d, "test_data_set_0")
    os.makedirs(data, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    onnx.save(model, path)
    for i, inp in enumerate(model.graph.input):
        onnx.save_tensor(numpy_helper.from_array(feeds[inp.name], inp.name), os.path.join(data, f"input_{i}.pb"))
    for i, (n, a) in enumerate(zip(out_names, ort_out)):
        onnx.save_tensor(numpy_helper.from_array(np.asarray(a), n), os.path.join(data, f"output_{i}.pb"))

    def sig(vs):
        return ", ".join(
            f"{v.name} {TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()} "
            f"{[x.dim_value for x in v.type.tensor_type.shape.dim]}" for v in vs
        )

    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT)
    report = {
        "path": os.path.relpath(path, REPO),
        "bytes": os.path.getsize(path),
        "nodes": len(model.graph.node),
        "params": params,
        "ops": summary(model),
        "inputs": sig(model.graph.input),
        "outputs": sig(model.graph.output),
        "diff": max(diffs),
        "std": [float(np.std(a)) for a in ort_out],
        "acts": acts,
    }
    print(
        f"wrote {report['path']} ({report['bytes']} bytes, {report['nodes']} nodes, {params} float params)\n"
        f"  in:  {report['inputs']}\n  out: {report['outputs']} (std {report['std'][0]:.3g})\n"
        f"  onnxruntime vs reference: max rel diff {report['diff']:.3g}; {acts}\n"
        f"  ops: {report['ops']}"
    )
    return report
