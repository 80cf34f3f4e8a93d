"""Convert one TensorFlow.js graph model to ONNX with tf2onnx, after filling the op attributes the
TF.js converter left out. Run by convert.sh inside its own virtualenv (TensorFlow, tf2onnx); the
backend never imports this file.

    python tfjs_to_onnx.py MODEL.json OUT.onnx [tf2onnx options...]

Why the attributes: the TF.js converter drops attributes that TensorFlow.js does not read. tf2onnx
rebuilds a TensorFlow GraphDef from the JSON and needs them: TensorFlow's importer refuses a
_FusedConv2D / _FusedDepthwiseConv2dNative without `TArgs` (the dtypes of its fused arguments; it has
no default: one T per argument), and tf2onnx reads each output's dtype from attributes such as
TopKV2's `index_type`, which has a default in the op definition. Every missing attribute that has a
default gets it; `TArgs` gets [T] * num_args; anything else missing stops the conversion. The weights
file (*.bin) is used as it is.

tf2onnx 1.17 still calls numpy.product, which numpy 2 removed; numpy.prod is the same function.

The package stores the weights as float16 (TF.js weight quantisation) and tf2onnx writes them back as
float32, doubling the files. Every float32 weight that float16 holds exactly (all of them in these models)
is stored as float16 again, followed by a Cast to float32: the network computes exactly what it did, ONNX
Runtime folds the casts when it loads the graph, and the file is half the size.

tf2onnx names and orders the nodes it makes differently from run to run (its rewriters walk sets of
Python objects), so two conversions of one model give equal networks in different bytes. The graph is
written in a canonical form instead, so that convert.sh can check each output's sha256: every weight is
named after a hash of its contents, every node after a hash of its operator, attributes and (canonical)
inputs, nodes are sorted topologically with ties broken by name, identical nodes on identical inputs are
kept once, and the converter's symbolic dimension names and temporary path are dropped.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path


def filled_attributes(model: dict) -> tuple[dict, list[str]]:
    """The model JSON with missing op attributes filled, and a line per filled (op, attribute)."""
    from google.protobuf import json_format
    from tensorflow.python.framework import op_def_registry

    filled = set()
    for node in model["modelTopology"]["node"]:
        if node["op"] in ("Const", "Placeholder"):
            continue
        # TF.js names some fused ops without the leading underscore TensorFlow registers them with.
        op_def = op_def_registry.get(node["op"]) or op_def_registry.get("_" + node["op"])
        if op_def is None:
            raise SystemExit(f"{node['name']}: TensorFlow has no op {node['op']!r}")
        attrs = node.setdefault("attr", {})
        for attr in op_def.attr:
            if attr.name in attrs:
                continue
            if attr.HasField("default_value"):
                attrs[attr.name] = json_format.MessageToDict(attr.default_value)
            elif attr.name == "TArgs" and "T" in attrs and "num_args" in attrs:
                attrs["TArgs"] = {"list": {"type": [attrs["T"]["type"]] * int(attrs["num_args"]["i"])}}
            else:
                raise SystemExit(f"{node['name']} ({node['op']}): attribute {attr.name!r} is missing "
                                 "and has no default")
            filled.add(f"{node['op']}.{attr.name}")
    return model, sorted(filled)


def float16_weights(model) -> int:
    """Store the float32 weights that float16 holds exactly as float16 + Cast, in place; returns how many."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    casts, kept = [], []
    for weight in graph.initializer:
        values = numpy_helper.to_array(weight)
        if values.dtype != np.float32 or values.size < 16 or not np.array_equal(values.astype(np.float16), values):
            kept.append(weight)
            continue
        kept.append(numpy_helper.from_array(values.astype(np.float16), weight.name + "_float16"))
        casts.append(helper.make_node("Cast", [weight.name + "_float16"], [weight.name], to=onnx.TensorProto.FLOAT,
                                      name=weight.name + "_to_float32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


def canonical(model):
    """The same network with names and node order that depend only on the computation (see above)."""
    import hashlib
    import heapq

    from onnx import AttributeProto, numpy_helper

    graph = model.graph
    digest = lambda *parts: hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]  # noqa: E731
    kept_names = {value.name for value in list(graph.input) + list(graph.output)}
    renamed = {name: name for name in kept_names}
    weights = {}
    for weight in graph.initializer:
        values = numpy_helper.to_array(weight)  # the same values may be stored as raw bytes or as a list
        name = "w_" + digest(str(values.dtype).encode(), str(values.shape).encode(), values.tobytes())
        renamed[weight.name] = name
        weight.name = name
        weights[name] = weight
    producers = {output: node for node in graph.node for output in node.output}
    pending = list(graph.node)
    nodes = {}
    while pending:  # name each node once all its inputs are named
        waiting = []
        for node in pending:
            if any(i and i not in renamed and i in producers for i in node.input):
                waiting.append(node)
                continue
            if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
                raise SystemExit(f"{node.name}: sub-graphs are not supported by the canonical form")
            inputs = [renamed.get(i, i) for i in node.input]
            attributes = sorted(a.SerializeToString(deterministic=True) for a in node.attribute)
            name = f"{node.op_type}_" + digest(node.op_type.encode(), node.domain.encode(), *attributes,
                                                *(i.encode() for i in inputs))
            for index, output in enumerate(node.output):
                renamed[output] = output if output in kept_names else f"{name}:{index}"
            if name in nodes:
                continue  # the same operator on the same inputs: its outputs are the first one's
            del node.input[:]
            node.input.extend(inputs)
            outputs = [renamed[o] for o in node.output]
            del node.output[:]
            node.output.extend(outputs)
            node.name = name
            nodes[name] = node
        if len(waiting) == len(pending):
            raise SystemExit("the graph has a cycle")
        pending = waiting
    # Kahn's topological sort, the smallest name first among the nodes that are ready
    producer_of = {output: name for name, node in nodes.items() for output in node.output}
    needs = {name: {producer_of[i] for i in node.input if i in producer_of} for name, node in nodes.items()}
    users = {name: [] for name in nodes}
    for name, inputs in needs.items():
        for needed in inputs:
            users[needed].append(name)
    ready = [name for name, inputs in needs.items() if not inputs]
    heapq.heapify(ready)
    ordered = []
    while ready:
        name = heapq.heappop(ready)
        ordered.append(nodes[name])
        for user in users[name]:
            needs[user].discard(name)
            if not needs[user]:
                heapq.heappush(ready, user)
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.initializer[:]
    graph.initializer.extend(weights[name] for name in sorted(weights))
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                dim.dim_param = f"{value.name}_{axis}"
    graph.doc_string = ""
    return model


def main() -> None:
    source, target, *tf2onnx_args = sys.argv[1:]
    source = Path(source)
    model, filled = filled_attributes(json.loads(source.read_text()))
    print(f"{source.name}: filled {', '.join(filled) or 'nothing'}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        patched = Path(scratch) / source.name
        patched.write_text(json.dumps(model))
        for group in model["weightsManifest"]:
            for weights in group["paths"]:
                shutil.copy(source.parent / weights, Path(scratch) / weights)

        import numpy

        numpy.product = numpy.prod
        from tf2onnx import convert

        sys.argv = ["tf2onnx.convert", "--tfjs", str(patched), "--output", target, *tf2onnx_args]
        convert.main()
    import onnx

    model = onnx.load(target)
    stored = float16_weights(model)
    model = canonical(model)
    onnx.checker.check_model(model)
    onnx.save(model, target)
    print(f"{Path(target).name}: {stored} weights stored as float16", file=sys.stderr)


if __name__ == "__main__":
    main()
