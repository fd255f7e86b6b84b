"""How much of a graph NNAPI, CoreML and QNN would take: onnxruntime's own mobile usability checker, in numbers.

    from dynalora.export.mobile_report import analyze, markdown
    report = analyze({"dynamic": Path("model.onnx"), "fixed": Path("mobile/model.fixed.onnx")})

For each graph and each execution provider this records what `python -m
onnxruntime.tools.check_onnx_model_mobile_usability` prints, as data: the share of nodes the EP takes, the
partitions (each one is a CPU <-> accelerator hand-over at run time), the operators that fall back to CPU, the
nodes refused only because a tensor shape is dynamic, and the checker's verdict (YES / MAYBE / NO). The graph is
first optimised to onnxruntime's BASIC level, as the checker and the ORT-format conversion do.

What the checker does not give, added here:
* `compute_share`: the share of multiply-accumulates (MatMul / Gemm, from the shape-inferred tensor sizes) in
  the nodes the EP takes. Node counts overstate the CPU fallback of a transformer: its shape bookkeeping is many
  tiny nodes, its compute is a few MatMuls. Only computed where every MatMul shape is known (fixed-shape graphs).
* QNN: onnxruntime ships no QNN checker. The QNN HTP backend runs quantised node units (DequantizeLinear ->
  op -> QuantizeLinear), so for a QDQ graph the report gives the share of MatMul / Gemm nodes and MACs that sit
  in such units; for a float graph it says QNN needs `--quantize qdq-int8`. This is a structural check, not
  onnxruntime's verdict, and the report says so.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EPS = ("NNAPI", "CoreML MLProgram", "CoreML NeuralNetwork")
MATMUL_OPS = ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul")


def _checkers() -> dict[str, Any]:
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    return {
        "NNAPI": uc.check_nnapi_partitions,
        "CoreML MLProgram": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md"),
        "CoreML NeuralNetwork": lambda m, fixed: uc.check_coreml_partitions(
            m, fixed, "coreml_supported_neuralnetwork_ops.md"),
    }


def _shapes(model: Any) -> dict[str, list[int] | None]:
    """Value name -> static shape (None where a dim is symbolic), from inputs, outputs, value_info, initializers."""
    out: dict[str, list[int] | None] = {}
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value for d in dims] if all(d.HasField("dim_value") for d in dims) else None
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def node_macs(node: Any, shapes: Mapping[str, list[int] | None]) -> int | None:
    """Multiply-accumulates of one MatMul-like node (0 for any other op); None if a shape is unknown."""
    if node.op_type not in MATMUL_OPS:
        return 0
    a_name = node.input[0]
    out = shapes.get(node.output[0])
    a = shapes.get(a_name)
    if out is None or a is None or not a:
        return None
    k = a[-2] if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute) else a[-1]
    total = 1
    for d in out:
        total *= d
    return total * k


def _ep_entry(info: Any, shapes: Mapping[str, list[int] | None], nodes: list[Any]) -> dict[str, Any]:
    supported = {id(n) for group in info.supported_groups for n in group}
    macs = [node_macs(n, shapes) for n in nodes]
    known = all(m is not None for m in macs)
    total = sum(m for m in macs if m)
    taken = sum(m for n, m in zip(nodes, macs) if m and id(n) in supported)
    fallback: dict[str, int] = {}
    for n in nodes:
        if id(n) not in supported:
            key = f"{n.domain or 'ai.onnx'}:{n.op_type}"
            fallback[key] = fallback.get(key, 0) + 1
    return {
        "nodes": int(info.num_nodes),
        "supported_nodes": int(info.num_supported_nodes),
        "node_share": info.num_supported_nodes / info.num_nodes if info.num_nodes else 0.0,
        "compute_share": (taken / total if total else None) if known else None,
        "partitions": int(info.num_partitions),
        "partition_sizes": [len(g) for g in info.supported_groups],
        "unsupported_ops": sorted(info.unsupported_ops),
        "nodes_unsupported_due_to_op": int(info.nodes_unsupported_due_to_op),
        "nodes_unsupported_due_to_dynamic_shape": int(info.nodes_unsupported_due_to_dynamic_input),
        "cpu_fallback_nodes_by_op": dict(sorted(fallback.items(), key=lambda kv: -kv[1])),
        "caveats": list(info.supported_ops_checker.get_caveats()),
        "suitability": info.suitability().name,
    }


def _qnn_entry(model: Any, shapes: Mapping[str, list[int] | None]) -> dict[str, Any]:
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    if not any(n.op_type == "DequantizeLinear" for n in nodes):
        return {"applicable": False, "why": "a float graph: the QNN HTP backend runs QDQ (quantised) models; "
                                            "export with --quantize qdq-int8"}
    units = total_nodes = 0
    macs_in = macs_all = 0
    known = True
    for n in nodes:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        total_nodes += 1
        m = node_macs(n, shapes)
        known = known and m is not None
        inputs_dq = all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                        for i in n.input[:2])
        outputs_q = all(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], [])) and bool(
            consumers.get(n.output[0]))
        in_unit = inputs_dq and outputs_q
        units += in_unit
        macs_all += m or 0
        macs_in += (m or 0) if in_unit else 0
    return {"applicable": True, "check": "structural (onnxruntime ships no QNN checker): MatMul / Gemm nodes whose "
                                         "inputs are DequantizeLinear and whose outputs feed QuantizeLinear",
            "matmul_nodes": total_nodes, "in_qdq_units": units,
            "node_share": units / total_nodes if total_nodes else 0.0,
            "compute_share": (macs_in / macs_all if macs_all else None) if known else None}


def analyze_graph(path: Path) -> dict[str, Any]:
    """Every EP's coverage of one ONNX file (optimised to BASIC first, like the ORT-format conversion)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import optimize_model

    with tempfile.TemporaryDirectory(prefix="dynalora-mobile-") as tmp:
        basic = Path(tmp) / "basic.onnx"
        optimize_model(Path(path), basic)
        model = onnx.shape_inference.infer_shapes(onnx.load(str(basic)), strict_mode=False)
    shapes = _shapes(model)
    nodes = list(model.graph.node)
    checkers = _checkers()
    logging.getLogger("onnxruntime.tools").setLevel(logging.ERROR)
    eps = {ep: _ep_entry(checkers[ep](model, True), shapes, nodes) for ep in EPS}
    eps["QNN"] = _qnn_entry(model, shapes)
    dynamic_inputs = [i.name for i in model.graph.input if shapes.get(i.name) is None]
    return {"nodes": len(nodes), "dynamic_inputs": dynamic_inputs,
            "op_counts": _op_counts(nodes), "eps": eps}


def _op_counts(nodes: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def analyze(graphs: Mapping[str, Path]) -> dict[str, Any]:
    """{graph label: analyze_graph(path)} for each graph of the package."""
    return {label: analyze_graph(path) for label, path in graphs.items()}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown(report: Mapping[str, Any]) -> str:
    """The human-readable mobile_report.md (every number comes from the JSON)."""
    lines = [f"# Mobile package: {report['target']}", "",
             "Coverage from onnxruntime's mobile usability checker (`onnxruntime.tools.mobile_helpers."
             "usability_checker`) on each graph after BASIC optimisation. compute share = share of MatMul / Gemm "
             "multiply-accumulates in the nodes the EP takes. QNN: a structural check of quantised node units "
             "(onnxruntime ships no QNN checker).", ""]
    for label, graph in report["graphs"].items():
        lines += [f"## Graph `{label}` ({graph['file']}, {graph['nodes']} nodes"
                  + (f"; dynamic inputs: {', '.join(graph['dynamic_inputs'])}" if graph["dynamic_inputs"] else
                     "; all shapes fixed") + ")", "",
                  "| EP | nodes taken | compute taken | partitions | verdict | falls back to CPU |",
                  "|---|---|---|---|---|---|"]
        for ep in EPS:
            e = graph["eps"][ep]
            fallback = ", ".join(o.split(":", 1)[1] for o in e["unsupported_ops"]) or "none (by operator)"
            if e["nodes_unsupported_due_to_dynamic_shape"]:
                fallback += f"; {e['nodes_unsupported_due_to_dynamic_shape']} nodes for dynamic shapes"
            lines.append(f"| {ep} | {e['supported_nodes']}/{e['nodes']} ({_pct(e['node_share'])}) | "
                         f"{_pct(e['compute_share'])} | {e['partitions']} | {e['suitability']} | {fallback} |")
        q = graph["eps"]["QNN"]
        if q["applicable"]:
            lines.append(f"| QNN (structural) | {q['in_qdq_units']}/{q['matmul_nodes']} MatMul/Gemm in QDQ units "
                         f"({_pct(q['node_share'])}) | {_pct(q['compute_share'])} | | | |")
        else:
            lines.append(f"| QNN | not applicable: {q['why']} | | | | |")
        lines.append("")
    rewrites = report.get("rewrites")
    if rewrites:
        lines += ["## Rewrites applied to the fixed-shape graph (outputs checked against model.onnx)", ""]
        lines += [f"- {name}: {count} node(s)" for name, count in rewrites.items()]
        lines.append("")
    return "\n".join(lines)
