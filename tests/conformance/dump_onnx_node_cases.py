#!/usr/bin/env python3
"""Writes the ONNX backend node test cases in the ONNX test-data layout.

    dump_onnx_node_cases.py OUT_DIR            write every case, then OUT_DIR/manifest.json
    dump_onnx_node_cases.py --check OUT_DIR    exit 0 if OUT_DIR is a complete dump for the
                                               installed onnx and this script, 1 otherwise

The cases come from `onnx.backend.test.case.node.collect_testcases(None)` (built in memory by
the installed `onnx` package, release 1.23 or later; no download). Each case becomes

    OUT_DIR/<case>/model.onnx
    OUT_DIR/<case>/test_data_set_<k>/input_<i>.pb, output_<i>.pb   (TensorProtos)
    OUT_DIR/<case>/case.json

`case.json` holds the case's `rtol` and `atol`, its default-domain opset, its op types, the
names of the inputs and outputs of each data set and, for a data set whose values are not all
plain tensors (sequences, optionals, maps), `skipped` with the reason instead of the .pb files.

The inputs some cases draw from `np.random` are made deterministic by seeding it first, so a
failure found once is found again. `manifest.json` is written last, naming the onnx version,
the hash of this script and the number of cases: a dump without it is incomplete.
"""

import hashlib
import json
import os
import shutil
import sys
import warnings

FORMAT = 1


def script_hash():
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def manifest_ok(out_dir):
    import onnx

    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        m.get("format") == FORMAT
        and m.get("onnx_version") == onnx.__version__
        and m.get("script_sha256") == script_hash()
    )


def default_opset(model):
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


def as_tensor(value, name):
    """A TensorProto named `name`, or (None, reason) for values that are not tensors."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    if isinstance(value, TensorProto):
        t = TensorProto()
        t.CopyFrom(value)
        t.name = name
        return t, None
    if isinstance(value, (np.ndarray, np.generic)):
        try:
            return numpy_helper.from_array(np.asarray(value), name=name), None
        except Exception as e:  # noqa: BLE001 - any dtype from_array cannot write
            return None, f"{type(e).__name__}: {e}"
    if value is None:
        return None, "an optional without a value"
    if isinstance(value, (list, tuple)):
        return None, "a sequence"
    if isinstance(value, dict):
        return None, "a map"
    return None, f"a {type(value).__name__}"


def write_case(case, case_dir):
    os.makedirs(case_dir)
    model = case.model
    with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    graph_inputs = [i.name for i in model.graph.input]
    graph_outputs = [o.name for o in model.graph.output]
    data_sets = []
    for k, (inputs, outputs) in enumerate(case.data_sets):
        ds_dir = os.path.join(case_dir, f"test_data_set_{k}")
        os.makedirs(ds_dir)
        entry = {"inputs": [], "outputs": [], "skipped": None}
        protos = []
        for kind, values, names in (
            ("input", inputs, graph_inputs),
            ("output", outputs, graph_outputs),
        ):
            for i, v in enumerate(values):
                name = names[i] if i < len(names) else f"{kind}_{i}"
                t, why = as_tensor(v, name)
                if t is None:
                    entry["skipped"] = entry["skipped"] or f"{kind} `{name}` is {why}"
                    continue
                entry[kind + "s"].append(name)
                protos.append((f"{kind}_{i}.pb", t))
        if entry["skipped"] is None:
            for file, t in protos:
                with open(os.path.join(ds_dir, file), "wb") as f:
                    f.write(t.SerializeToString())
        data_sets.append(entry)
    meta = {
        "name": case.name,
        "rtol": case.rtol,
        "atol": case.atol,
        "opset": default_opset(model),
        "ops": [n.op_type for n in model.graph.node],
        "domains": sorted({n.domain or "ai.onnx" for n in model.graph.node}),
        "data_sets": data_sets,
    }
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


def dump(out_dir):
    import numpy as np
    import onnx
    import onnx.backend.test.case.node as node_cases

    # Seeded before the cases are built: they draw their inputs at import time.
    np.random.seed(0)
    with warnings.catch_warnings():
        # Cases that overflow on purpose (casts to narrow types) warn; the values are right.
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases(None)
    # Write beside OUT_DIR and rename: a reader never sees half a dump.
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    names = []
    for case in sorted(cases, key=lambda c: c.name):
        write_case(case, os.path.join(tmp, case.name))
        names.append(case.name)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(
            {
                "format": FORMAT,
                "onnx_version": onnx.__version__,
                "script_sha256": script_hash(),
                "cases": len(names),
            },
            f,
            indent=1,
        )
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
    print(f"wrote {len(names)} ONNX node test cases (onnx {onnx.__version__}) to {out_dir}")


def main(argv):
    if len(argv) == 3 and argv[1] == "--check":
        return 0 if manifest_ok(argv[2]) else 1
    if len(argv) != 2 or argv[1].startswith("-"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    dump(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
