"""`dynalora export fused` of a causal-LM fusion: a router graph run once per prompt + one decoder that mixes
the stacked task adapters with those weights for the whole generation. onnxruntime-genai and dynalora's
runtime both run the folder.

    dynalora export fused --fuse fuse/ --out exports/routed [--quantize int8|int4]

    p = dynalora.edge_runtime.load("exports/routed")
    p.generate("John thinks the cat is asleep, but", route_text="the cat is asleep")   # router + decoder, one call

    import onnxruntime_genai as og                                  # the same decoder in onnxruntime-genai:
    probs, w = router_session.run(None, {"input_ids": ..., "attention_mask": ...})     # router.onnx, once
    gen = og.Generator(model, params); gen.set_model_input("fusion_weights", w); gen.append_tokens(ids); ...

Files: model.onnx (+ model.onnx.data), genai_config.json and the tokenizer files (onnxruntime-genai's model
builder), router.onnx, manifest.json (dynalora: checksums, tasks, verification), genai_export.json.

The decoder. onnxruntime-genai's builder adds ONE constant LoRA adapter (`adapter_path`) and has no notion of
several adapters mixed per sequence, so it builds the LoRA subgraph and we rewrite it. Per adapted projection
the builder writes MatMul(x, A) -> MatMul(., B) -> Add(base). We build it with a zero PEFT template whose rank
is R = sum_k r_k (the K adapters' ranks of that projection, each adapter's own dynamic ranks), set A / B to the
stacked factors of `dynalora.fusion.model.FusedLoRALayer` (A = [A_1; ...; A_K]^T, B = [s_1 B_1, ...]^T,
constants in model.onnx) and insert the per-sequence component weights between the two MatMuls:

    MatMul(x, A) -> Mul(., Unsqueeze(Gather(fusion_weights, owner, axis=1), 1)) -> MatMul(., B)

`fusion_weights` (batch, K) is a graph input and `owner` (R,) the adapter of each rank component: exactly
FusedLoRALayer's ((x A^T) * w[:, owner]) B^T. Zeros give the base model, one-hot adapter k alone. The weights
are fed at every step (prefill and each decoded token) unchanged, which is the fusion's semantics: route the
prompt once, keep its top-p weights for the whole answer. int8 / int4 quantise the base MatMuls only; A / B stay
fp32 (`nodes_to_exclude`).

The router. `router.onnx` is the fusion's router as PyTorch computes it: input_ids, attention_mask (batch, seq)
-> router_probs, fusion_weights (batch, K). Its features are the mean input embedding, and the embedding lookup
is the decoder's own: its nodes (a Gather; for SmolLM2's tied fp32 table a Transpose of lm_head's weight and a
Gather; int4 a GatherBlockQuantized of lm_head's 4-bit blocks) are copied into router.onnx with their tensors
referring to the decoder's model.onnx.data, so router.onnx itself is the router MLP (~0.6 MB for SmolLM2) and
no second copy of the table is written. The rest (masked mean, MLP, softmax, top-p) is torch.export of
fusion/router.py. With a block-quantised table (int4) the router's features are the decoder's int4
embeddings: its difference from the fp32 PyTorch router is recorded, not bounded.

Prompts. A fusion routes on the input text and decodes the task's prompt (the chat template's user turn, or the
plain `### Instruction` format). The manifest records that wrapping as `prompt_template` (prefix and suffix
around the user text, rendered by the tokenizer's own chat template), so the runtime's generate(prompt) wraps
the prompt exactly as training did, without jinja.

Checked before the folder is kept (built in a temporary sibling, renamed at the end): the router graph against
PyTorch on evaluation texts of every task (probabilities and weights within 1e-4, same top-1), and greedy
generations on evaluation prompts of every task, routed by the exported router, against `load_fusion`'s
FusedModel.generate: fp32 identical in dynalora's runtime and in onnxruntime-genai, or nothing is written;
int8 / int4 record the agreement and the quantised decoder's quality against fp32 (edge_runtime/lm_quality.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.atomic import atomic_dir
from dynalora.core.outdir import OutLock
from dynalora.edge_runtime.predictor import FUSION_INPUT
from dynalora.errors import DynaloraError
from dynalora.export.common import PARITY_ATOL_FP32, base_manifest, max_abs, opset_of, session, write_export_manifest
from dynalora.export.errors import ExportError

ROUTER_FILE = "router.onnx"
WEIGHTS_INPUT = FUSION_INPUT  # the decoder input the runtime feeds (edge_runtime/predictor.py)
ROUTER_OUTPUTS = ("router_probs", "fusion_weights")
VERIFY_PER_TASK = 2  # evaluation prompts per task decoded by both runtimes and PyTorch
VERIFY_TOKENS = 12
_SENTINEL = "\u2063DYNALORA_PROMPT\u2063"


# ---- the router graph ---------------------------------------------------------------------------------------

def _router_head(fused: Any) -> Any:
    """masked mean + Router + top_p_weights on given token embeddings (the graph torch.export traces); the
    embedding lookup in front of it is the decoder's own (graft_embedding)."""
    import torch

    from dynalora.fusion.router import masked_mean, top_p_weights

    class RouterHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.router = fused.router
            self.top_p = float(fused.top_p)

        def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            probs = self.router(masked_mean(inputs_embeds, attention_mask)).softmax(-1)
            return probs, top_p_weights(probs, self.top_p)

    return RouterHead().eval()


def export_router(fused: Any, sample: dict[str, np.ndarray], path: Path, decoder_dir: Path) -> dict[str, Any]:
    """router.onnx: the decoder's embedding lookup (grafted, reading the decoder's weights in model.onnx.data) +
    the router head (torch.export + dynamo ONNX export, dynamic batch and sequence). Returns what was grafted."""
    import onnx
    import torch

    from dynalora.export.adapters import _exporter_error, _name_dynamic_dims
    from dynalora.export.common import quiet_onnx_export

    if fused.router is None:
        raise ExportError("this fusion has no router (a single adapter): export the run with `export merged` instead")
    ids = torch.from_numpy(sample["input_ids"])
    if ids.shape[0] < 2 or ids.shape[1] < 2:
        raise ExportError("the tracing sample needs at least 2 texts of at least 2 tokens")
    with torch.no_grad():
        args = (fused.model.get_input_embeddings()(ids), torch.from_numpy(sample["attention_mask"]))
    batch, seq = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    dims = {"inputs_embeds": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    raw = path.parent / (path.stem + ".raw.onnx")
    try:
        with torch.no_grad(), quiet_onnx_export():
            program = torch.export.export(_router_head(fused), args, dynamic_shapes=dims, strict=False)
            torch.onnx.export(program, args, str(raw), input_names=list(dims), output_names=list(ROUTER_OUTPUTS),
                              opset_version=18, dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # torch.onnx raises many unrelated types
        raise ExportError(f"the ONNX exporter cannot handle this fusion's router ({_exporter_error(exc)})") from None
    model = onnx.load(str(raw))
    _name_dynamic_dims(model, list(dims))
    raw.unlink()
    grafted = graft_embedding(model, decoder_dir)
    onnx.save(model, str(path))
    return grafted


def graft_embedding(router: Any, decoder_dir: Path) -> dict[str, Any]:
    """Replace the router graph's `inputs_embeds` input by the decoder's own embedding lookup of `input_ids`.

    The nodes that compute the decoder's token embeddings from input_ids (a Gather; for a tied fp32 table a
    Transpose of lm_head's weight then a Gather; for int4 a GatherBlockQuantized of lm_head's 4-bit blocks) are
    copied with their initializers as references into model.onnx.data: no second copy of the table on disk,
    and the router sees exactly the embeddings the decoder sees."""
    import onnx
    from onnx import helper

    decoder = onnx.load(str(decoder_dir / "model.onnx"), load_external_data=False)
    producer = {o: n for n in decoder.graph.node for o in n.output}
    inits = {i.name: i for i in decoder.graph.initializer}
    lookup = [n for n in decoder.graph.node if "input_ids" in n.input]
    if len(lookup) != 1 or lookup[0].op_type not in ("Gather", "GatherBlockQuantized"):
        raise ExportError("cannot find the decoder's embedding lookup (one Gather of input_ids) to share with the router")
    nodes, used_inits, todo, seen = [], set(), [lookup[0]], set()
    while todo:  # the lookup and everything it depends on, back to initializers / input_ids
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        nodes.append(node)
        for name in node.input:
            if name in producer:
                todo.append(producer[name])
            elif name in inits:
                used_inits.add(name)
            elif name and name != "input_ids":
                raise ExportError(f"the decoder's embedding lookup reads {name}, which the router cannot provide")
    order = {n.name: k for k, n in enumerate(decoder.graph.node)}
    nodes.sort(key=lambda n: order[n.name])
    graph = router.graph
    embeds = lookup[0].output[0]
    for node in graph.node:  # the head reads the grafted lookup's output
        for k, name in enumerate(node.input):
            if name == "inputs_embeds":
                node.input[k] = embeds
    kept = [i for i in graph.input if i.name != "inputs_embeds"]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch_size", "sequence_length"]),
                        *kept])
    head = list(graph.node)
    del graph.node[:]
    graph.node.extend([*[_copy(n) for n in nodes], *head])
    for name in sorted(used_inits):
        graph.initializer.append(_copy(inits[name]))  # external data: location / offset / length into model.onnx.data
    domains = {o.domain for o in router.opset_import}
    for imp in decoder.opset_import:
        if imp.domain not in domains:
            router.opset_import.append(_copy(imp))
    external = sum(int({e.key: e.value for e in inits[n].external_data}.get("length", 0)) for n in used_inits
                   if inits[n].data_location == onnx.TensorProto.EXTERNAL)
    return {"shared": True, "ops": [n.op_type for n in nodes], "tensors": sorted(used_inits),
            "bytes_in_model_data": external}


def _copy(proto: Any) -> Any:
    out = type(proto)()
    out.CopyFrom(proto)
    return out


# ---- the fused decoder --------------------------------------------------------------------------------------

def stacked_factors(fused: Any) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """PEFT module name -> (A^T (in, R), (scaled B)^T (R, out), owner (R,)) of every adapted projection."""
    out = {}
    for name, layer in fused.layers().items():
        if sum(layer.ranks) == 0:
            continue
        a = layer.lora_A.detach().float().numpy().T  # (in, R)
        b = layer.lora_B.detach().float().numpy().T  # (R, out), scaling already folded in
        out[name] = (np.ascontiguousarray(a), np.ascontiguousarray(b), layer.owner.numpy().astype(np.int64))
    if not out:
        raise ExportError("the fused adapters adapt no layer (every adapter has rank 0 everywhere)")
    return out


def fuse_lora_subgraph(folder: Path, stacked: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                       num_adapters: int) -> None:
    """Rewrite the builder's LoRA subgraph of model.onnx (see the module docstring); model.onnx.data is untouched."""
    import onnx
    from onnx import helper, numpy_helper

    from dynalora.export.genai import _lora_node, lora_input_name

    path = folder / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    inserted: dict[str, list[Any]] = {}
    for module, (a, b, owner) in sorted(stacked.items()):
        for which, value in (("A", a), ("B", b)):
            name = lora_input_name(module, which)
            init = inits.get(name)
            if init is None or list(init.dims) != list(value.shape):
                found = None if init is None else list(init.dims)
                raise ExportError(f"the genai builder's LoRA tensor {name} is {found}, expected {list(value.shape)}; "
                                  "this architecture's LoRA naming is not supported")
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
        node_a, node_b = by_name.get(_lora_node(module, "A")), by_name.get(_lora_node(module, "B"))
        if node_a is None or node_b is None or node_b.input[0] != node_a.output[0]:
            raise ExportError(f"the genai builder's LoRA subgraph of {module} is not MatMul(x, A) -> MatMul(., B)")
        prefix = node_a.name.rsplit("/", 2)[0] + "/fusion"
        owner_name = lora_input_name(module, "A").replace(".lora_A.MatMul.weight", ".fusion_owner")
        graph.initializer.append(numpy_helper.from_array(owner, owner_name))
        gathered, weights, mixed = prefix + "/Gather/output_0", prefix + "/Unsqueeze/output_0", prefix + "/Mul/output_0"
        inserted[node_a.name] = [
            helper.make_node("Gather", [WEIGHTS_INPUT, owner_name], [gathered], name=prefix + "/Gather", axis=1),
            helper.make_node("Unsqueeze", [gathered, "fusion_axis_1"], [weights], name=prefix + "/Unsqueeze"),
            helper.make_node("Mul", [node_a.output[0], weights], [mixed], name=prefix + "/Mul"),
        ]
        node_b.input[0] = mixed
    graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "fusion_axis_1"))
    nodes = []
    for node in graph.node:  # keep the topological order: the new nodes right after their lora_A MatMul
        nodes.append(node)
        nodes.extend(inserted.get(node.name, []))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info(WEIGHTS_INPUT, onnx.TensorProto.FLOAT, ["batch_size", num_adapters]))
    onnx.save(model, str(path))


# ---- prompts ------------------------------------------------------------------------------------------------

def prompt_template(tokenizer: Any) -> dict[str, Any]:
    """The wrapping core/generate.py `render` puts around a user text (no history): prefix, suffix, and whether
    the tokenizer's special tokens (BOS) are added when encoding it."""
    from dynalora.core.generate import PLAIN_PROMPT, has_chat_template

    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], add_generation_prompt=True,
                                             tokenize=False)
        special, kind = False, "chat template"
    else:
        text, special, kind = PLAIN_PROMPT.format(prompt=_SENTINEL), True, "plain"
    if text.count(_SENTINEL) != 1:
        raise ExportError("cannot read the prompt wrapping from the tokenizer's chat template")
    prefix, suffix = text.split(_SENTINEL)
    return {"format": kind, "prefix": prefix, "suffix": suffix, "add_special_tokens": special}


# ---- verification -------------------------------------------------------------------------------------------

def _examples(fusion: Any) -> list[tuple[int, Any, Any]]:
    """(task index, TaskData, example) for the first VERIFY_PER_TASK evaluation examples of every task."""
    from dynalora.fusion.train import task_data

    out = []
    for k, spec in enumerate(fusion.specs):
        try:
            data = task_data(spec)
        except DynaloraError as exc:
            raise ExportError(f"cannot load evaluation texts to verify the export ({exc})") from None
        out += [(k, data, e) for e in data.eval[:VERIFY_PER_TASK]]
    return out


def verify_router(fusion: Any, folder: Path, examples: list[tuple[int, Any, Any]], quantised_embedding: bool,
                  ) -> dict[str, Any]:
    """router.onnx vs the PyTorch router on every task's evaluation texts in one padded batch, and one text alone:
    within 1e-4 with the same top-1 task, unless the decoder's embedding table (which the router reads) is
    block-quantised (then the differences and the top-1 agreement are recorded)."""
    import torch

    from dynalora.export.common import encode
    from dynalora.fusion.router import top_p_weights

    sess = session(folder / ROUTER_FILE)
    texts = [e for _, _, e in examples]
    result: dict[str, Any] = {}
    worst = 0.0
    for label, chunk in (("mixed_tasks", texts), ("single", texts[:1])):
        feeds = encode(fusion.tokenizer, chunk, fusion.max_length, ["input_ids", "attention_mask"])
        with torch.no_grad():
            probs = fusion.model.route(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
            weights = top_p_weights(probs, fusion.model.top_p)
        got = sess.run(list(ROUTER_OUTPUTS), feeds)
        diffs = {"router_probs": max_abs(np.asarray(got[0]), probs.numpy()),
                 "fusion_weights": max_abs(np.asarray(got[1]), weights.numpy())}
        agree = float(np.mean(np.asarray(got[0]).argmax(-1) == probs.numpy().argmax(-1)))
        result[label] = {"batch": len(chunk), "max_abs": diffs, "same_top1_task": agree == 1.0, "top1_agreement": agree}
        worst = max(worst, *diffs.values(), 0.0 if agree == 1.0 or quantised_embedding else float("inf"))
    result["max_abs_diff"] = worst
    if quantised_embedding:  # int4: the decoder's (tied) embedding table is 4-bit, and the router reads it
        result["tolerance"] = None
        result["note"] = "the router reads the decoder's block-quantised embedding table: recorded, not bounded"
        return result
    result["tolerance"] = PARITY_ATOL_FP32
    if not worst <= PARITY_ATOL_FP32:
        raise ExportError(f"the router graph differs from PyTorch by {worst:.3g} (> {PARITY_ATOL_FP32:g}) or routes "
                          "differently; nothing was written")
    return result


def verify_generation(fusion: Any, folder: Path, examples: list[tuple[int, Any, Any]], precision: str) -> dict[str, Any]:
    """Greedy tokens, routed by router.onnx, of dynalora's runtime and of onnxruntime-genai vs FusedModel.generate."""
    from dynalora.core.choice import prompt_text
    from dynalora.core.generate import eos_ids, prompt_ids
    from dynalora.edge_runtime import load
    from dynalora.export.genai import GenaiModel
    from dynalora.fusion.train import encode_texts, task_config

    tok, model = fusion.tokenizer, fusion.model
    runtime = load(folder, verify=False)
    genai = GenaiModel(folder)
    eos = set(eos_ids(tok, model.model))
    counts = {"ours": [0, 0, 0], "genai": [0, 0, 0]}  # identical sequences, same tokens, tokens
    wrapped = 0
    for k, data, e in examples:
        ids = prompt_ids(tok, data.spec, e)
        steps = min(VERIFY_TOKENS, int(task_config(fusion.specs[k]).max_new_tokens))
        route = encode_texts(tok, [e], fusion.max_length)
        want, _ = model.generate(tok, [ids], route["input_ids"], route.get("attention_mask"), max_new_tokens=steps)
        want = want[0]
        # the runtime's one call: wrap the task's prompt text, route on the example's text, decode
        wrapped += runtime.prompt_ids(prompt_text(data.spec, e)) == ids if not e.history else 1
        weights = runtime.route([e.text])["fusion_weights"]
        got = {"ours": runtime.greedy_decode(np.asarray([ids], dtype=np.int64), steps, stop_at_eos=True,
                                             fusion_weights=weights)["tokens"][0].tolist(),
               "genai": genai.greedy(ids, steps, inputs={WEIGHTS_INPUT: weights})}
        for name, tokens in got.items():
            tokens = tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]
            c = counts[name]
            c[0] += tokens == want
            c[1] += sum(a == b for a, b in zip(tokens, want))
            c[2] += max(len(tokens), len(want))
    n = len(examples)
    record: dict[str, Any] = {"prompts": n, "max_new_tokens": VERIFY_TOKENS, "prompt_template_matches": int(wrapped),
                              "data": f"the first {VERIFY_PER_TASK} evaluation prompts of each of {len(fusion.specs)} tasks"}
    for name, (same_seq, same_tok, total) in counts.items():
        record[name] = {"identical_sequences": same_seq, "token_agreement": same_tok / total if total else 1.0}
    if wrapped != n:
        raise ExportError(f"the recorded prompt template does not reproduce {n - wrapped} of {n} prompts; nothing was written")
    if precision == "fp32":
        for name in counts:
            if record[name]["identical_sequences"] != n:
                raise ExportError(f"the fp32 fused decoder's greedy generations ({name}) differ from PyTorch on "
                                  f"{n - record[name]['identical_sequences']} of {n} prompts; nothing was written")
    return record


# ---- the export ---------------------------------------------------------------------------------------------

def export_genai_fused(fuse_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, quantize: str | None = None,
                       overwrite: bool = False, block_size: int | None = None) -> dict[str, Any]:
    """Export a causal-LM fusion folder as router.onnx + a fused genai decoder; returns the manifest written."""
    from dynalora.export.common import refuse_existing
    from dynalora.export.genai import _require_genai
    from dynalora.export.genai_export import PRECISION_OF, builder_options
    from dynalora.fusion.train import load_fusion

    if quantize not in PRECISION_OF:
        raise ExportError(f"a causal-LM fusion exports in fp32 (default), --quantize int8 or --quantize int4; got {quantize!r}")
    out = refuse_existing(out, overwrite)
    _require_genai()
    try:
        fusion = load_fusion(fuse_dir)
    except DynaloraError as exc:
        raise ExportError(f"cannot load fusion {fuse_dir}: {exc}") from None
    precision = PRECISION_OF[quantize]
    return export_loaded_fusion(fusion, out, precision, overwrite=overwrite, extra=builder_options(precision, block_size))


def export_loaded_fusion(fusion: Any, out: Path, precision: str, *, overwrite: bool = False,
                         extra: dict[str, str] | None = None) -> dict[str, Any]:
    """The export of an already loaded fusion (`LoadedFusion`: .model, .tokenizer, .specs, .config, .path,
    .max_length); benchmarks/edge_llm.py builds K = 8 from repeated adapters this way."""
    from dynalora.core.models import resolve_model_path
    from dynalora.export.common import encode
    from dynalora.export.genai import MANIFEST, _lora_node, _run_builder, describe_graph, write_zero_template
    from dynalora.export.genai_export import fix_gguf_bytelevel_decoder, quantised_quality

    fuse_dir = fusion.path
    fused, tok = fusion.model, fusion.tokenizer
    if not fused.causal:
        raise ExportError(f"{fuse_dir} is a classifier fusion; this exporter takes causal-LM fusions")
    hf_dir = Path(resolve_model_path(str(fusion.specs[0].info["base_model"])))
    if not (hf_dir / "config.json").is_file():
        raise ExportError(f"the fusion's base model {hf_dir} is not a local Hugging Face folder")
    stacked = stacked_factors(fused)
    examples = _examples(fusion)
    names = [s.name for s in fusion.specs]
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    with OutLock(out, "export"), atomic_dir(out, overwrite=overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix="dynalora-fused-") as work:
        template = Path(work) / "template"
        write_zero_template(hf_dir, {m: a.shape[1] for m, (a, _, _) in stacked.items()}, template)
        extra = {**(extra or {}), "adapter_path": str(template)}
        if precision != "fp32":  # A / B must stay float constants: keep them out of MatMulNBits
            extra["nodes_to_exclude"] = ",".join(_lora_node(m, w) for m in sorted(stacked) for w in "AB")
        _run_builder(hf_dir, tmp, precision, extra, None)
        fuse_lora_subgraph(tmp, stacked, len(names))
        fix = fix_gguf_bytelevel_decoder(tmp)
        sample = encode(tok, [e for _, _, e in examples], fusion.max_length, ["input_ids", "attention_mask"])
        shared = export_router(fused, sample, tmp / ROUTER_FILE, tmp)
        graph = describe_graph(tmp)
        info = {"format": "onnxruntime-genai", "precision": precision, "source": str(hf_dir), "tokenizer_fix": fix,
                "fusion": "stacked LoRA with fusion_weights (export/genai_fused.py)", **graph}
        (tmp / MANIFEST).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        sess = session(tmp / "model.onnx")
        manifest = base_manifest(kind="fused", run_info=None, model_type=str(config.get("model_type", "")),
                                 inputs=[i.name for i in sess.get_inputs()], outputs=[o.name for o in sess.get_outputs()],
                                 opset=opset_of(tmp / "model.onnx"), precision=precision, max_length=fusion.max_length,
                                 source_runs=[t["source"] for t in fusion.config["tasks"]])
        del sess
        manifest.update(
            runtime={"genai": f"onnxruntime-genai (genai_config.json; feed {WEIGHTS_INPUT} from {ROUTER_FILE})",
                     "dynalora": "manifest.json (generate(prompt, route_text=...))"},
            base_model=str(fusion.specs[0].info["base_model"]), router_graph=ROUTER_FILE,
            prompt_template=prompt_template(tok), model_bytes=sum(p.stat().st_size for p in tmp.glob("model.onnx*")),
            router_bytes=(tmp / ROUTER_FILE).stat().st_size)
        manifest["fusion"] = {
            "source": str(Path(fuse_dir).resolve()), "top_p": fused.top_p, "problem": fused.problem,
            "tasks": [{"name": s.name, "problem": s.problem, "run": str(s.path)} for s in fusion.specs],
            "ranks": {m: {"total": int(a.shape[1]), "per_adapter": [int((o == k).sum()) for k in range(len(names))]}
                      for m, (a, _, o) in sorted(stacked.items())},
            "router": {k: fusion.config["router"].get(k) for k in ("features", "parameters", "hidden", "eval_accuracy")},
            "router_embedding": shared,
        }
        write_export_manifest(tmp, manifest)  # the runtime checks below load the folder through its manifest
        verification: dict[str, Any] = {"router": verify_router(fusion, tmp, examples,
                                                                "GatherBlockQuantized" in shared["ops"])}
        verification["generation"] = verify_generation(fusion, tmp, examples, precision)
        if precision != "fp32":
            # the quantised decoder with no adapter weight (= the base model) against the fp32 base model
            verification["quality"] = quantised_quality(tmp, hf_dir, None,
                                                        extra_feeds={WEIGHTS_INPUT: np.zeros((1, len(names)), np.float32)})
        manifest["verification"] = verification
        written = write_export_manifest(tmp, manifest)
    return written
