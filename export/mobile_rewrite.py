"""Rewrites that move nodes from the CPU fallback onto NNAPI / CoreML, each computing the same function.

    from dynalora.export.mobile_rewrite import rewrite_for_mobile
    counts = rewrite_for_mobile(model)      # in place; {"LayerNormalization -> ...": 13, ...}

onnxruntime's mobile checker (export/mobile_report.py) names the operators NNAPI and CoreML do not take in a
BERT-family export: LayerNormalization and Erf (GELU) in every layer split the graph into ~26 partitions, each a
CPU <-> accelerator hand-over. Both have exact (or fp32-exact) equivalents in operators the EPs do take:

* LayerNormalization(x, scale, bias) over the last axis ->
      d = x - ReduceMean(x);  y = d / Sqrt(ReduceMean(d * d) + epsilon) * scale + bias
  the definition itself (ONNX's function body of LayerNormalization is this computation).
* Erf(x) -> Abramowitz & Stegun 7.1.26 with sign restored:
      t = 1 / (1 + p|x|);  erf(x) = x / (|x| + 1e-30) * (1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-x^2))
  whose absolute error is below 1.5e-7 for every x (A&S), i.e. at fp32 rounding level for GELU's outputs.
  Abs, Exp, Mul, Add, Div are NNAPI and CoreML MLProgram operators; Sign (not in NNAPI's list) is replaced by
  x / (|x| + 1e-30), which equals sign(x) for |x| > 1e-23 and gives erf(0) = 0.

The attention-mask preamble of a Hugging Face encoder (run once per inference, but a CPU <-> accelerator hand-over
before the first layer) holds two more operators NNAPI lacks:
* Expand(x, shape) with a constant shape (fixed-shape graphs) -> Add(x, zeros(shape)): broadcasting is what
  Expand does; when x is an integer tensor whose only consumer is a Cast to float, the Cast moves first
  (Cast and Expand commute), so the Add is a float Add.
* Where(cond, a, b) with `a` a constant whose values are all finite -> c * a + (1 - c) * b with c = Cast(cond,
  float): equal to Where for finite b (the mask's b is 1 - Cast(mask), always finite).

Only the fixed-shape graph of a mobile package is rewritten, and export/mobile.py checks its outputs against the
untouched model.onnx before anything is kept; whatever still falls back to the CPU is named in mobile_report.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Abramowitz & Stegun, Handbook of Mathematical Functions, 7.1.26 (|error| <= 1.5e-7)
AS_P = 0.3275911
AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
SIGN_EPS = 1e-30


class _Builder:
    """Fresh names and constant initializers for the nodes one rewrite adds."""

    def __init__(self, model: Any, prefix: str, taken: set[str]) -> None:
        self.model = model
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.taken = taken  # every name in the graph, shared by the builders of one rewrite_for_mobile call

    def name(self, hint: str) -> str:
        count = 0
        while True:  # unique in the whole graph: two nodes may share a name (or have none)
            count += 1
            candidate = f"{self.prefix}/{hint}_{count}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _reduce_mean(b: _Builder, x: str, opset: int) -> str:
    if opset >= 18:  # axes became an input in opset 18
        return b.op("ReduceMean", [x, b.const([-1], np.int64)], keepdims=1)
    return b.op("ReduceMean", [x], axes=[-1], keepdims=1)


def _layer_norm(model: Any, node: Any, opset: int, taken: set[str]) -> list[Any] | None:
    attrs = {a.name: a for a in node.attribute}
    axis = attrs["axis"].i if "axis" in attrs else -1
    if axis != -1 or len([o for o in node.output if o]) != 1:
        return None  # only the common form: normalise the last axis, Mean / InvStdDev outputs unused
    eps = attrs["epsilon"].f if "epsilon" in attrs else 1e-5
    b = _Builder(model, node.name or "layernorm", taken)
    x = node.input[0]
    d = b.op("Sub", [x, _reduce_mean(b, x, opset)])
    var = _reduce_mean(b, b.op("Mul", [d, d]), opset)
    y = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, b.const(eps)])])])
    if len(node.input) > 2 and node.input[2]:
        b.op("Add", [b.op("Mul", [y, node.input[1]]), node.input[2]], output=node.output[0])
    else:
        b.op("Mul", [y, node.input[1]], output=node.output[0])
    return b.nodes


def _erf(model: Any, node: Any, opset: int, taken: set[str]) -> list[Any]:
    b = _Builder(model, node.name or "erf", taken)
    x = node.input[0]
    ax = b.op("Abs", [x])
    t = b.op("Div", [b.const(1.0), b.op("Add", [b.const(1.0), b.op("Mul", [ax, b.const(AS_P)])])])
    poly = b.op("Mul", [t, b.const(AS_A[4])])
    for a in reversed(AS_A[:4]):  # Horner: (((a5 t + a4) t + a3) t + a2) t + a1, times t
        poly = b.op("Mul", [b.op("Add", [poly, b.const(a)]), t])
    decay = b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])
    y = b.op("Sub", [b.const(1.0), b.op("Mul", [poly, decay])])
    sign = b.op("Div", [x, b.op("Add", [ax, b.const(SIGN_EPS)])])
    b.op("Mul", [sign, y], output=node.output[0])
    return b.nodes


def _const(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _elem_types(model: Any) -> dict[str, int]:
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    return {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}


def _consumers(model: Any, name: str) -> list[Any]:
    return [n for n in model.graph.node if name in n.input]


FLOAT = 1  # onnx.TensorProto.FLOAT


def _expand(model: Any, node: Any, opset: int, taken: set[str]) -> list[Any] | None:
    shape = _const(model, node.input[1])
    if shape is None:
        return None
    types = _elem_types(model)
    x = node.input[0]
    b = _Builder(model, node.name or "expand", taken)
    if types.get(x) == FLOAT:
        b.op("Add", [x, b.const(np.zeros(shape, np.float32))], output=node.output[0])
        return b.nodes
    users = _consumers(model, node.output[0])
    if len(users) == 1 and users[0].op_type == "Cast" and any(a.name == "to" and a.i == FLOAT
                                                              for a in users[0].attribute):
        cast = users[0]  # Cast(Expand(x)) == Add(Cast(x), 0): the Cast node becomes the Add
        moved = b.op("Cast", [x], to=FLOAT)
        zeros = b.const(np.zeros(shape, np.float32))
        cast.op_type = "Add"
        del cast.attribute[:]
        del cast.input[:]
        cast.input.extend([moved, zeros])
        return b.nodes
    return None


def _where(model: Any, node: Any, opset: int, taken: set[str]) -> list[Any] | None:
    a = _const(model, node.input[1])
    types = _elem_types(model)
    if a is None or a.dtype != np.float32 or not np.all(np.isfinite(a)) or types.get(node.input[2]) != FLOAT:
        return None
    b = _Builder(model, node.name or "where", taken)
    c = b.op("Cast", [node.input[0]], to=FLOAT)
    keep = b.op("Mul", [c, node.input[1]])
    other = b.op("Mul", [b.op("Sub", [b.const(1.0), c]), node.input[2]])
    b.op("Add", [keep, other], output=node.output[0])
    return b.nodes


REWRITES = {
    "LayerNormalization": ("LayerNormalization -> ReduceMean/Sub/Mul/Sqrt/Div (its definition)", _layer_norm),
    "Erf": ("Erf -> Abs/Exp/Mul/Add/Div polynomial (A&S 7.1.26, |error| < 1.5e-7)", _erf),
    "Expand": ("Expand (constant shape) -> Add of zeros", _expand),
    "Where": ("Where (finite constant branch) -> Cast/Mul/Sub/Add", _where),
}


# Which operators to rewrite for which device: NNAPI (android) lacks all four; CoreML's MLProgram (ios) runs
# LayerNormalization, Erf and Where itself (and lacks Abs / Neg, which the Erf polynomial uses), so only
# Expand is rewritten there.
FOR_TARGET = {"android": ("LayerNormalization", "Erf", "Expand", "Where"), "ios": ("Expand",)}


def rewrite_for_mobile(model: Any, ops: tuple[str, ...] | None = None) -> dict[str, int]:
    """Apply the rewrites of `ops` (default: all) in place (main graph, standard-domain nodes); returns
    {description: nodes rewritten}.

    Expects shape-inferred value_info (the rewrites of Expand / Where read element types)."""
    opset = _opset(model)
    g = model.graph
    taken = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {n.name for n in g.node} | {
        i.name for i in g.input}
    new_nodes: list[Any] = []
    counts: dict[str, int] = {}
    for node in model.graph.node:
        wanted = ops is None or node.op_type in ops
        entry = REWRITES.get(node.op_type) if wanted and node.domain in ("", "ai.onnx") else None
        replacement = entry[1](model, node, opset, taken) if entry else None
        if replacement is None:
            new_nodes.append(node)
            continue
        new_nodes.extend(replacement)
        counts[entry[0]] = counts.get(entry[0], 0) + 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = ({i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
            | {i.name for i in model.graph.input})
    unused = [init for init in model.graph.initializer if init.name not in used]  # e.g. Expand's shape
    for init in unused:
        model.graph.initializer.remove(init)
    return counts
