"""Export folders that onnxruntime-genai runs: `og.Model(folder)` + `og.Tokenizer` + `og.Generator`.

    from dynalora.export.genai import build_genai_folder, build_genai_adapters, genai_greedy, GenaiModel
    build_genai_folder(Path("hf/smollm2"), Path("exports/smol-int4"), "int4")
    genai_greedy(Path("exports/smol-int4"), [1, 504, 3458], max_new_tokens=16)

    build_genai_adapters(Path("hf/smollm2"), {"sst2": Path("peft/sst2"), "rt": Path("peft/rt")},
                         Path("exports/smol-lora"), "fp32")
    m = GenaiModel(Path("exports/smol-lora"))          # one og.Model: the base decoder, loaded once
    m.load_adapter("sst2"); m.load_adapter("rt")       # adapters/NAME.onnx_adapter
    m.greedy([1, 504], 16, adapter="sst2"); m.greedy([1, 504], 16, adapter="rt"); m.greedy([1, 504], 16)

What the library does and what is ours
--------------------------------------
* The graph, genai_config.json and the tokenizer files are written by onnxruntime-genai's own model
  builder (`onnxruntime_genai.models.builder`: `parse_extra_options` + `create_model`), precision
  "fp32", "int8" or "int4" on the CPU execution provider. int8 and int4 are the builder's block-wise
  weight-only quantisation: every MatMul (layers and lm_head) becomes a com.microsoft `MatMulNBits`
  (bits 8 or 4, block_size 32, accuracy_level 4 = int8 activations on CPU, symmetric); the embedding
  Gather and the norms stay fp32. The builder runs in a child process (`_BUILDER_SCRIPT`) because
  importing it has global side effects: onnxruntime's matmul_nbits_quantizer calls
  `logging.basicConfig(level=INFO)` at import, `onnxruntime_genai.models` appends its folder to sys.path
  (top-level modules `builder`, `builders`, `quantization`...), and it prints progress bars.
* Two small shims in that child, both because onnxruntime-genai 0.18 targets transformers 5 and this
  project pins transformers 4.57: (1) builders/base.py imports `Qwen3_5ForConditionalGeneration` /
  `Qwen3_5MoeForConditionalGeneration` at module level; they exist only in transformers >= 5 and are only
  used to load Qwen3.5 checkpoints, so a placeholder class is set on `transformers` when missing;
  (2) the builder reads RoPE settings from transformers-5 `config.rope_parameters` (collapsing
  `rope_scaling` into it) and iterates `config.rope_scaling`, which transformers 4 leaves `None` for plain
  RoPE (Llama, SmolLM2): we set the equivalent `{"rope_type": "default", "rope_theta": ...}`.
* LoRA adapters (`build_genai_adapters`). The builder's `adapter_path` option takes ONE PEFT adapter and
  writes it as constants: per target projection `MatMul(x, A) -> MatMul(., B*scaling) -> Add` to the base
  MatMul (`make_matmul_lora`), with A / B as initializers `model.layers.i.attn.q_proj.lora_A.MatMul.weight`
  etc. It has no option to make them graph inputs and does not write `.onnx_adapter` files (those are
  Olive's job upstream). So, by hand, on top of the builder's graph:
    1. a zero-valued "template" PEFT adapter (written with peft's own get_peft_model/save_pretrained)
       whose rank per projection is the largest rank any adapter gives it (rank_pattern) and whose target
       modules are the union of all adapters' - the builder builds the LoRA subgraph from it, with the LoRA
       MatMuls excluded from int8/int4 quantisation (`nodes_to_exclude`) so A / B stay fp32 tensors;
    2. every LoRA initializer is also declared a graph input (an "overridable initializer"; only the
       graph proto is rewritten, model.onnx.data is untouched). Its default is zero, so with no adapter
       active the folder is exactly the base model;
    3. one `adapters/NAME.onnx_adapter` per adapter (onnxruntime.AdapterFormat): A^T and
       B^T * scaling, zero-padded to the shared rank (a zero column of A / zero row of B adds nothing),
       all-zero for a projection the adapter does not target.
  At run time onnxruntime-genai switches them with `og.Adapters.load` + `Generator.set_active_adapter`
  (one og.Model, no reload), and plain onnxruntime with `RunOptions.add_active_adapter(LoraAdapter)`.

Every folder is built in a temporary sibling and renamed only after it loaded with `og.Model`, and
(verify=True) matched the PyTorch model it came from: fp32 logits within 1e-3 of HF transformers (same top-1);
int8 / int4 record the difference and the top-1 agreement without a bound; adapter folders check each
adapter through plain onnxruntime against its PeftModel (fp32: within 1e-3, same top-1).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.atomic import atomic_dir, write_json
from dynalora.edge_runtime.tolerances import BASE_LM_PARITY_ATOL_FP32
from dynalora.export.errors import ExportError

PRECISIONS = ("fp32", "int8", "int4")
MANIFEST = "genai_export.json"
ADAPTER_DIR = "adapters"
# fp32 logits vs PyTorch (max abs; SmolLM2's logits reach ~30) on VERIFY_TEXT, plus the same top-1 token at
# every position. Measured on SmolLM2-135M: <= 6e-5 (base and LoRA graphs); the tiny test Llama: < 1e-5.
# Rare / special token ids are far touchier: ids 1, 5..11 gave up to 5e-3 at one position, hence a real text.
GENAI_PARITY_ATOL_FP32 = BASE_LM_PARITY_ATOL_FP32
VERIFY_TEXT = "The movie was good, and the story was even better."
VERIFY_IDS = (5, 6, 7, 8, 9, 10, 11)  # instead, when the `tokenizers` library cannot read the folder's tokenizer.json
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LORA_INIT = re.compile(r"\.lora_[AB]\.MatMul\.weight$")
# PEFT module name -> the builder's node base name for the projections its make_matmul_lora handles
# (decoder-layer attention q/k/v/o and MLP gate/up/down: Llama, Mistral, Qwen2, SmolLM2 naming).
_PEFT_MODULE = re.compile(
    r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")

# The child process that runs the model builder (see the module docstring for the two shims).
_BUILDER_SCRIPT = r"""
import json, sys
args = json.loads(sys.argv[1])
import transformers
for _name in ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"):
    if not hasattr(transformers, _name):  # transformers < 5: referenced at import, used only for Qwen3.5
        setattr(transformers, _name, type(_name, (), {}))
import onnxruntime_genai.models.builder as builder
extra = [f"{k}={v}" for k, v in args["extra"].items()]
opts = builder.parse_extra_options(None, args["input"], args["output"], args["precision"], "cpu", args["cache"], extra)
config = opts["hf_details"]["hf_config"]
if getattr(config, "rope_scaling", None) is None and not isinstance(getattr(config, "rope_parameters", None), dict):
    config.rope_scaling = {"rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0)}
builder.create_model(None, args["input"], args["output"], args["precision"], "cpu", args["cache"], **opts)
"""


def genai_version() -> str | None:
    """onnxruntime-genai's version, or None when it is not installed."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    return str(og.__version__)


def _require_genai() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise ExportError(f"onnxruntime-genai is not installed ({exc}); pip install onnxruntime-genai") from exc
    return og


def _runtime_error(message: str) -> Exception:
    from dynalora.edge_runtime.predictor import RuntimeLoadError

    return RuntimeLoadError(message)


def _ort_reason(exc: BaseException) -> str:
    """onnxruntime's message without its C++ source location and signature ('/ort/x.cc:93 const T f(...) msg')."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    located = re.match(r"^\S+\.(?:cc|h|cpp):\d+\s+(.*)$", text)
    if located:  # '/path/x.cc:93 const T ns::f(args) message': drop the location and the signature
        text = located.group(1)
        opening = text.find("(")
        cut = text.find(") ", opening) if opening != -1 else -1
        if cut != -1:
            text = text[cut + 2:]
    return text[:300]


# ---------------------------------------------------------------------------------------------------------
# Building


def _check_inputs(hf_dir: Path, out_dir: Path, precision: str, overwrite: bool) -> dict[str, Any]:
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    config_file = Path(hf_dir) / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not config.get("architectures"):
        raise ExportError(f"{config_file} names no `architectures`; the genai model builder dispatches on it")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ExportError(f"output folder {out_dir} exists; pass overwrite=True to replace it")
    return config


def _run_builder(hf_dir: Path, out: Path, precision: str, extra: Mapping[str, str], timeout: float | None) -> str:
    """Run onnxruntime-genai's model builder into `out` in a child process; returns its log."""
    _require_genai()
    with tempfile.TemporaryDirectory(prefix="genai-cache-") as cache:
        args = {"input": str(Path(hf_dir).resolve()), "output": str(out), "precision": precision,
                "cache": cache, "extra": {k: str(v) for k, v in extra.items()}}
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        try:
            # -P and cwd=cache: nothing in the caller's folder can shadow the builder's top-level modules
            # (`builders`, `quantization`, ... which onnxruntime_genai.models puts on sys.path).
            proc = subprocess.run([sys.executable, "-P", "-c", _BUILDER_SCRIPT, json.dumps(args)], cwd=cache,
                                  capture_output=True, text=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ExportError(f"the genai model builder did not finish within {timeout:g} s") from exc
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ExportError(f"the genai model builder failed on {hf_dir} ({precision}): "
                          f"{lines[-1] if lines else f'exit code {proc.returncode}'}")
    if not (out / "model.onnx").is_file() or not (out / "genai_config.json").is_file():
        raise ExportError(f"the genai model builder wrote no model.onnx / genai_config.json for {hf_dir}")
    return log


def describe_graph(folder: Path) -> dict[str, Any]:
    """Inputs, outputs, op counts, MatMulNBits settings and LoRA inputs of a genai folder's model.onnx."""
    import onnx

    model = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False)
    ops: dict[str, int] = {}
    nbits: set[tuple[int, int, int]] = set()
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            nbits.add((attrs.get("bits", 4), attrs.get("block_size", 0), attrs.get("accuracy_level", 0)))
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input]
    lora = {n: inits[n] for n in inputs if _LORA_INIT.search(n) and n in inits}
    return {
        "inputs": [n for n in inputs if n not in lora],
        "outputs": [o.name for o in model.graph.output],
        "ops": dict(sorted(ops.items())),
        "matmul_nbits": [{"bits": b, "block_size": s, "accuracy_level": a} for b, s, a in sorted(nbits)],
        "lora_inputs": lora,
    }


TOKENIZER_PROBE = "The movie was good, 123!"


def _tokenizer_status(og: Any, model: Any, folder: Path, bos: Any) -> str:
    """'ok' when og.Tokenizer encodes a probe text like the `tokenizers` library does with tokenizer.json.

    genai reads tokenizer.json / tokenizer_config.json with its own tokenizer library (onnxruntime-extensions):
    it refuses WordPiece (BertTokenizer) and can misread a file it does load (a GGUF-converted byte-level
    BPE whose decoder has Replace('▁', ' ') is taken for SentencePiece and encodes spaces to id -1).
    """
    try:
        tok = og.Tokenizer(model)
        got = [int(t) for t in tok.encode(TOKENIZER_PROBE)]
    except Exception as exc:
        return f"unsupported: {_ort_reason(exc)}"
    try:
        from tokenizers import Tokenizer

        ref = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TOKENIZER_PROBE, add_special_tokens=False).ids
    except Exception as exc:  # no / unreadable tokenizer.json: nothing to compare with
        return f"unchecked: {exc}"
    bos_ids = set(bos) if isinstance(bos, list) else {bos}
    if got and got[0] in bos_ids and (not ref or ref[0] != got[0]):
        got = got[1:]  # genai's Llama/SentencePiece tokenizers add BOS themselves
    if got != ref:
        return f"mismatch: og.Tokenizer encodes {TOKENIZER_PROBE!r} as {got[:12]}, tokenizer.json as {ref[:12]}"
    return "ok"


def tokenizer_status(folder: Path) -> str:
    """Whether onnxruntime-genai reads a folder's tokenizer as the `tokenizers` library does: 'ok',
    'unsupported: ...' (og.Tokenizer refuses it), 'mismatch: ...' (it encodes differently) or 'unchecked: ...'."""
    og = _require_genai()
    folder = Path(folder)
    try:
        model = og.Model(str(folder))
    except Exception as exc:
        raise _runtime_error(f"og.Model cannot load {folder}: {_ort_reason(exc)}") from exc
    bos = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"].get("bos_token_id")
    return _tokenizer_status(og, model, folder, bos)


def _hf_logits(hf_dir: Path, ids: Sequence[int], adapters: Any = None, adapter: str | None = None) -> np.ndarray:
    import torch

    model = adapters
    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    if adapter is not None:
        model.set_adapter(adapter)
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits[0].float().numpy()


def _verify_prompt(folder: Path, config: Mapping[str, Any], vocab: int) -> list[int]:
    """BOS + VERIFY_TEXT encoded with the folder's tokenizer.json (the `tokenizers` library), within the vocab."""
    bos = config.get("bos_token_id")
    bos = bos[0] if isinstance(bos, list) else bos
    try:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(VERIFY_TEXT, add_special_tokens=False).ids
    except Exception:
        ids = []
    if not ids or any(not 0 <= i < vocab for i in ids):
        ids = [i % vocab for i in VERIFY_IDS]
    return ([int(bos)] if bos is not None else []) + list(ids)


def _compare(name: str, ref: np.ndarray, got: np.ndarray, precision: str) -> dict[str, Any]:
    diff = float(np.max(np.abs(ref - got)))
    top1 = float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1)))
    if precision == "fp32" and not (diff <= GENAI_PARITY_ATOL_FP32 and top1 == 1.0):
        raise ExportError(f"{name}: the genai graph's logits differ from PyTorch by {diff:.3g} (bound "
                          f"{GENAI_PARITY_ATOL_FP32:g}), top-1 agreement {top1:.0%}; nothing was written")
    return {"max_abs_logit_diff": round(diff, 6), "top1_agreement": top1,
            "bound": GENAI_PARITY_ATOL_FP32 if precision == "fp32" else None}


def build_genai_folder(hf_dir: Path, out_dir: Path, precision: str, *, overwrite: bool = False,
                       extra_options: Mapping[str, str] | None = None, verify: bool = True,
                       timeout: float | None = None) -> dict[str, Any]:
    """Build an onnxruntime-genai folder from a local HF causal-LM folder with the genai model builder.

    precision: "fp32"; "int8" / "int4" = the builder's block-wise weight-only quantisation (MatMulNBits,
    bits 8 / 4, block_size 32, accuracy_level 4, symmetric) of every MatMul incl. lm_head. Builder
    options (e.g. {"block_size": "64", "accuracy_level": "1"}) pass through `extra_options`.
    The folder holds model.onnx (+ model.onnx.data), genai_config.json, the HF tokenizer files and
    genai_export.json (what this returns). Raises ExportError for a bad precision / folder, a builder
    failure, a folder og.Model cannot load, or (verify, fp32) logits off PyTorch by more than 1e-3.
    """
    og = _require_genai()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    config = _check_inputs(hf_dir, out_dir, precision, overwrite)
    start = time.perf_counter()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        _run_builder(hf_dir, tmp, precision, dict(extra_options or {}), timeout)
        build_seconds = time.perf_counter() - start
        info = _finish(og, hf_dir, tmp, config, precision, build_seconds, verify, adapters=None)
    return {**info, "folder": str(out_dir)}


def _finish(og: Any, hf_dir: Path, tmp: Path, config: Mapping[str, Any], precision: str, build_seconds: float,
            verify: bool, adapters: Any) -> dict[str, Any]:
    """Load check, verification and manifest of a freshly built folder (still the temporary sibling)."""
    graph = describe_graph(tmp)
    if precision != "fp32" and not graph["ops"].get("MatMulNBits"):
        raise ExportError(f"the genai builder wrote no MatMulNBits for precision {precision}")
    try:
        model = og.Model(str(tmp))
    except Exception as exc:
        raise ExportError(f"og.Model cannot load the built folder: {_ort_reason(exc)}") from exc
    genai_config = json.loads((tmp / "genai_config.json").read_text(encoding="utf-8"))
    info: dict[str, Any] = {
        "format": "onnxruntime-genai",
        "precision": precision,
        "builder": f"onnxruntime-genai {og.__version__} (onnxruntime_genai.models.builder, execution_provider cpu)",
        "source": str(hf_dir.resolve()),
        "architecture": config["architectures"][0],
        "context_length": genai_config["model"].get("context_length"),
        "tokenizer": _tokenizer_status(og, model, tmp, genai_config["model"].get("bos_token_id")),
        "build_seconds": round(build_seconds, 2),
        **graph,
    }
    if verify:
        vocab = int(genai_config["model"]["vocab_size"])
        ids = _verify_prompt(tmp, genai_config["model"], vocab)
        if adapters is None:
            got = GenaiModel(tmp, _model=model).last_logits(ids)
            info["verification"] = {"prompt_ids": ids,
                                    **_compare("base", _hf_logits(hf_dir, ids)[-1], got, precision)}
        else:
            info["verification"] = {"prompt_ids": ids, "adapters": {}}
            for name in [None, *adapters.names]:
                file = None if name is None else tmp / ADAPTER_DIR / f"{name}.onnx_adapter"
                got = ort_prefill_logits(tmp, ids, adapter=file)
                with adapters.disabled(name is None):
                    ref = _hf_logits(hf_dir, ids, adapters.peft_model, name)
                info["verification"]["adapters"][name or "(none)"] = _compare(name or "base", ref, got, precision)
    del model
    info["files"] = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()) + [MANIFEST]
    write_json(tmp / MANIFEST, info)
    return info


# ---------------------------------------------------------------------------------------------------------
# LoRA adapters


class _Adapters:
    """Every PEFT adapter loaded into one PeftModel, and each one's A / B per target projection."""

    def __init__(self, hf_dir: Path, dirs: Mapping[str, Path]) -> None:
        import torch
        from peft import PeftConfig, PeftModel
        from peft.tuners.lora import LoraLayer
        from transformers import AutoModelForCausalLM

        self.names = list(dirs)
        for name, folder in dirs.items():
            if not _NAME_OK.match(name):
                raise ExportError(f"adapter name {name!r} must be letters, digits, '_', '.', '-' (it names a file)")
            try:
                cfg = PeftConfig.from_pretrained(str(folder))
            except Exception as exc:
                raise ExportError(f"adapter {name}: {folder} is not a PEFT adapter folder ({exc})") from exc
            if str(cfg.peft_type).split(".")[-1] != "LORA":
                raise ExportError(f"adapter {name}: peft_type {cfg.peft_type} is not LORA")
            for flag, what in (("use_dora", "DoRA"), ("lora_bias", "a LoRA bias"),
                               ("modules_to_save", "modules_to_save")):
                if getattr(cfg, flag, None):
                    raise ExportError(f"adapter {name}: {what} cannot be written as LoRA A / B inputs")
        base = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
        try:
            peft_model = PeftModel.from_pretrained(base, str(dirs[self.names[0]]), adapter_name=self.names[0])
            for name in self.names[1:]:
                peft_model.load_adapter(str(dirs[name]), adapter_name=name)
        except Exception as exc:
            raise ExportError(f"the adapters do not load onto {hf_dir}: {str(exc).splitlines()[0][:300]}") from exc
        self.peft_model = peft_model.eval()
        # weights[name][module] = (A^T (in, r), B^T * scaling (r, out)); ranks[module] = largest r
        self.weights: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {n: {} for n in self.names}
        self.ranks: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, int]] = {}
        for full, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            short = full.removeprefix("base_model.model.")
            for name in self.names:
                if name not in module.lora_A:
                    continue
                if not isinstance(module.get_base_layer(), torch.nn.Linear) or not _PEFT_MODULE.match(short):
                    raise ExportError(f"adapter {name}: LoRA on {short} cannot be built; the genai builder takes LoRA "
                                      "only on decoder-layer q/k/v/o_proj and gate/up/down_proj Linear layers")
                if getattr(module, "lora_variant", {}).get(name) is not None or module.lora_B[name].bias is not None:
                    raise ExportError(f"adapter {name}: {short} uses a LoRA variant or bias (plain LoRA only)")
                a = module.lora_A[name].weight.detach().float().T.numpy()
                b = (module.lora_B[name].weight.detach().float().T * float(module.scaling[name])).numpy()
                self.weights[name][short] = (np.ascontiguousarray(a), np.ascontiguousarray(b))
                self.ranks[short] = max(self.ranks.get(short, 0), a.shape[1])
                self.shapes[short] = (a.shape[0], b.shape[1])
        if not self.ranks:
            raise ExportError("the adapters adapt no Linear layer")

    class _Disabled:
        def __init__(self, peft_model: Any, on: bool) -> None:
            self.cm = peft_model.disable_adapter() if on else None

        def __enter__(self) -> None:
            if self.cm is not None:
                self.cm.__enter__()

        def __exit__(self, *exc: Any) -> None:
            if self.cm is not None:
                self.cm.__exit__(*exc)

    def disabled(self, on: bool) -> _Adapters._Disabled:
        return self._Disabled(self.peft_model, on)

    def write_template(self, hf_dir: Path, folder: Path) -> None:
        """An all-zero PEFT adapter with every adapted projection at its largest rank (peft writes it)."""
        write_zero_template(hf_dir, self.ranks, folder)

    def parameters(self, name: str) -> dict[str, np.ndarray]:
        """One adapter's values for every LoRA input of the graph, padded to the shared rank."""
        out: dict[str, np.ndarray] = {}
        for module, rank in self.ranks.items():
            n_in, n_out = self.shapes[module]
            a_pad = np.zeros((n_in, rank), np.float32)
            b_pad = np.zeros((rank, n_out), np.float32)
            if module in self.weights[name]:
                a, b = self.weights[name][module]
                a_pad[:, : a.shape[1]] = a
                b_pad[: b.shape[0], :] = b
            out[lora_input_name(module, "A")] = a_pad
            out[lora_input_name(module, "B")] = b_pad
        return out


def write_zero_template(hf_dir: Path, ranks: Mapping[str, int], folder: Path) -> None:
    """An all-zero PEFT LoRA adapter (written by peft itself) with rank ranks[module] on each PEFT module name:
    the genai builder builds its LoRA subgraph from it, and we then feed or set the real A / B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    top = max(ranks.values())
    pattern = {re.escape(m): r for m, r in ranks.items()}
    config = LoraConfig(r=top, lora_alpha=top, target_modules=sorted(ranks), rank_pattern=pattern,
                        alpha_pattern=dict(pattern), lora_dropout=0.0, bias="none")
    base = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    template = get_peft_model(base, config)
    with torch.no_grad():
        for pname, param in template.named_parameters():
            if "lora_" in pname:
                param.zero_()
    template.save_pretrained(str(folder))


def lora_input_name(module: str, which: str) -> str:
    """PEFT module `model.layers.3.self_attn.q_proj` -> builder's `model.layers.3.attn.q_proj.lora_A.MatMul.weight`."""
    m = _PEFT_MODULE.match(module)
    if m is None:
        raise ExportError(f"{module} is not a projection the genai builder adapts")
    block = "attn" if m.group(2) == "self_attn" else "mlp"
    return f"model.layers.{m.group(1)}.{block}.{m.group(3)}.lora_{which}.MatMul.weight"


def _lora_node(module: str, which: str) -> str:
    """The builder's node name for a LoRA MatMul (what `nodes_to_exclude` keeps out of quantisation)."""
    m = _PEFT_MODULE.match(module)
    assert m is not None
    block = "attn" if m.group(2) == "self_attn" else "mlp"
    return f"/model/layers.{m.group(1)}/{block}/{m.group(3)}/lora_{which}/MatMul"


def _lora_as_inputs(folder: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Declare every LoRA initializer of the builder's graph a graph input (default stays: zeros)."""
    import onnx

    path = folder / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)  # proto only: model.onnx.data is not rewritten
    inits = {i.name: i for i in model.graph.initializer if _LORA_INIT.search(i.name)}
    if set(inits) != set(expected):
        missing = sorted(set(expected) - set(inits))[:3]
        extra = sorted(set(inits) - set(expected))[:3]
        raise ExportError(f"the genai builder's LoRA tensors are not the ones expected (missing {missing}, "
                          f"unexpected {extra}); this architecture's naming is not supported")
    existing = {i.name for i in model.graph.input}
    for name, init in sorted(inits.items()):
        if tuple(init.dims) != tuple(expected[name]):
            raise ExportError(f"the genai builder wrote {name} with shape {list(init.dims)}, "
                              f"expected {list(expected[name])}")
        if init.data_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"the genai builder wrote {name} as type {init.data_type}, not float32")
        if name not in existing:
            model.graph.input.append(onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    onnx.save(model, str(path))


def _write_adapter(path: Path, params: Mapping[str, np.ndarray]) -> None:
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v, np.float32))
                        for k, v in params.items()})
    fmt.export_adapter(str(path))


def build_genai_adapters(hf_dir: Path, peft_adapter_dirs: Mapping[str, Path], out_dir: Path, precision: str = "fp32",
                         *, overwrite: bool = False, extra_options: Mapping[str, str] | None = None,
                         verify: bool = True, timeout: float | None = None) -> dict[str, Any]:
    """One genai base decoder whose LoRA A / B are graph inputs + `adapters/NAME.onnx_adapter` per PEFT adapter.

    Adapters may differ in rank (per layer too) and in target modules (q/k/v/o_proj, gate/up/down_proj of
    the decoder layers): each projection gets the largest rank any adapter gives it, smaller ones are
    zero-padded, a projection an adapter leaves alone gets zeros. With no adapter active the folder is the
    base model. int8 / int4 quantise the base MatMuls only; LoRA A / B stay fp32.
    Refused (ExportError): non-LoRA PEFT types, DoRA, LoRA bias, modules_to_save, LoRA on other layers
    (embeddings, lm_head), adapters that do not load onto `hf_dir`.
    """
    og = _require_genai()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not peft_adapter_dirs:
        raise ExportError("give at least one PEFT adapter folder")
    config = _check_inputs(hf_dir, out_dir, precision, overwrite)
    start = time.perf_counter()
    adapters = _Adapters(hf_dir, {k: Path(v) for k, v in peft_adapter_dirs.items()})
    expected: dict[str, tuple[int, ...]] = {}
    for module, rank in adapters.ranks.items():
        n_in, n_out = adapters.shapes[module]
        expected[lora_input_name(module, "A")] = (n_in, rank)
        expected[lora_input_name(module, "B")] = (rank, n_out)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, tempfile.TemporaryDirectory(prefix="genai-lora-") as work:
        template = Path(work) / "template"
        adapters.write_template(hf_dir, template)
        extra = dict(extra_options or {})
        extra["adapter_path"] = str(template)
        if precision != "fp32":  # keep A / B out of MatMulNBits: they must stay plain float inputs
            nodes = [_lora_node(m, w) for m in sorted(adapters.ranks) for w in "AB"]
            extra["nodes_to_exclude"] = ",".join(filter(None, [extra.get("nodes_to_exclude", ""), *nodes]))
        _run_builder(hf_dir, tmp, precision, extra, timeout)
        _lora_as_inputs(tmp, expected)
        (tmp / ADAPTER_DIR).mkdir()
        for name in adapters.names:
            _write_adapter(tmp / ADAPTER_DIR / f"{name}.onnx_adapter", adapters.parameters(name))
        info = _finish(og, hf_dir, tmp, config, precision, time.perf_counter() - start, verify, adapters)
        info["adapters"] = {name: {"file": f"{ADAPTER_DIR}/{name}.onnx_adapter",
                                   "ranks": {m: int(w[0].shape[1]) for m, w in sorted(adapters.weights[name].items())}}
                            for name in adapters.names}
        info["lora_ranks"] = dict(sorted(adapters.ranks.items()))
        write_json(tmp / MANIFEST, info)
    return {**info, "folder": str(out_dir)}


# ---------------------------------------------------------------------------------------------------------
# Running


def check_adapter_file(path: Path, lora_inputs: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """Read an .onnx_adapter with onnxruntime and check it against the graph's LoRA inputs (one-line errors)."""
    import onnxruntime as ort

    path = Path(path)
    if lora_inputs is not None and not lora_inputs:
        raise _runtime_error(f"{path}: this genai folder was built without LoRA inputs "
                             "(build_genai_adapters makes them)")
    if not path.is_file():
        raise _runtime_error(f"adapter file {path} does not exist")
    try:
        params = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
    except Exception as exc:
        raise _runtime_error(f"{path} is not a valid .onnx_adapter file: {_ort_reason(exc)}") from exc
    shapes = {k: tuple(v.shape()) for k, v in params.items()}
    if lora_inputs is not None:
        for key, shape in shapes.items():
            if key not in lora_inputs:
                raise _runtime_error(f"{path}: parameter {key} is not a LoRA input of the graph")
            if tuple(lora_inputs[key]) != shape:
                raise _runtime_error(f"{path}: parameter {key} has shape {list(shape)}, the graph takes "
                                     f"{list(lora_inputs[key])}")
    return shapes


class GenaiModel:
    """One og.Model (loaded once) plus the adapters loaded into it; greedy decoding with og.Generator."""

    def __init__(self, folder: Path, *, _model: Any = None) -> None:
        og = _require_genai()
        self.folder = Path(folder)
        try:
            self.model = _model if _model is not None else og.Model(str(self.folder))
        except Exception as exc:
            raise _runtime_error(f"og.Model cannot load {self.folder}: {_ort_reason(exc)}") from exc
        self.config = json.loads((self.folder / "genai_config.json").read_text(encoding="utf-8"))["model"]
        manifest = self.folder / MANIFEST
        self.lora_inputs: dict[str, list[int]] | None = None
        if manifest.is_file():
            self.lora_inputs = json.loads(manifest.read_text(encoding="utf-8")).get("lora_inputs", {})
        self._adapters: Any = None
        self.adapter_names: list[str] = []

    def load_adapter(self, name: str, path: Path | None = None) -> None:
        """Load `path` (default adapters/NAME.onnx_adapter) under `name`; checked before genai sees it."""
        og = _require_genai()
        path = Path(path) if path is not None else self.folder / ADAPTER_DIR / f"{name}.onnx_adapter"
        check_adapter_file(path, self.lora_inputs)
        if self._adapters is None:
            self._adapters = og.Adapters(self.model)
        try:
            self._adapters.load(str(path), name)
        except Exception as exc:
            raise _runtime_error(f"onnxruntime-genai refuses adapter {path}: {_ort_reason(exc)}") from exc
        self.adapter_names.append(name)

    def _generator(self, prompt_ids: Sequence[int], max_length: int, adapter: str | None,
                   inputs: Mapping[str, np.ndarray] | None = None) -> Any:
        og = _require_genai()
        if not prompt_ids:
            raise _runtime_error("the prompt is empty")
        vocab = int(self.config["vocab_size"])
        bad = [t for t in prompt_ids if not 0 <= int(t) < vocab]
        if bad:
            raise _runtime_error(f"prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})")
        context = int(self.config.get("context_length") or max_length)
        if max_length > context:
            raise _runtime_error(f"prompt + new tokens = {max_length} exceeds the model's context_length {context}")
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=max_length, num_beams=1)
        gen = og.Generator(self.model, params)
        if adapter is not None:
            if adapter not in self.adapter_names:
                loaded = ", ".join(self.adapter_names) or "none"
                raise _runtime_error(f"adapter {adapter!r} is not loaded (loaded: {loaded})")
            gen.set_active_adapter(self._adapters, adapter)
        for name, value in (inputs or {}).items():  # further graph inputs, fed at every step (fusion_weights)
            try:
                gen.set_model_input(name, np.ascontiguousarray(value))
            except Exception as exc:
                raise _runtime_error(f"onnxruntime-genai refuses input {name}: {_ort_reason(exc)}") from exc
        gen.append_tokens(np.asarray([int(t) for t in prompt_ids], dtype=np.int32))
        return gen

    def greedy(self, prompt_ids: Sequence[int], max_new_tokens: int, adapter: str | None = None,
               inputs: Mapping[str, np.ndarray] | None = None) -> list[int]:
        """Greedy new tokens (prompt excluded); stops after the EOS token like HF generate (EOS included).
        inputs: further graph inputs held for the whole generation (a fused decoder's fusion_weights (1, K))."""
        if max_new_tokens < 1:
            return []
        gen = self._generator(prompt_ids, len(prompt_ids) + max_new_tokens, adapter, inputs)
        tokens: list[int] = []
        while not gen.is_done():
            gen.generate_next_token()
            # get_next_tokens, not get_sequence: genai leaves the EOS token out of the sequence when it stops
            # there, HF generate returns it.
            tokens.append(int(gen.get_next_tokens()[0]))
        return tokens

    def last_logits(self, prompt_ids: Sequence[int], adapter: str | None = None) -> np.ndarray:
        """Logits of the last prompt position (vocab,) as onnxruntime-genai computes them."""
        gen = self._generator(prompt_ids, len(prompt_ids) + 1, adapter)
        return np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1)


def genai_greedy(folder: Path, prompt_ids: list[int], max_new_tokens: int,
                 adapter: tuple[Path, str] | None = None) -> list[int]:
    """Greedy new tokens from a genai folder (og.Model + og.Generator, do_sample False, max_length = prompt + new).

    adapter = (path to .onnx_adapter, name): loaded with og.Adapters and activated on the generator.
    Stops at EOS like HF transformers' generate: the EOS token is the last one returned.
    """
    model = GenaiModel(folder)
    name = None
    if adapter is not None:
        path, name = adapter
        model.load_adapter(name, Path(path))
    return model.greedy(prompt_ids, max_new_tokens, adapter=name)


def ort_prefill_logits(folder: Path, prompt_ids: Sequence[int], adapter: Path | None = None) -> np.ndarray:
    """Logits (T, vocab) of a genai folder's model.onnx run by plain onnxruntime (empty KV cache).

    With `adapter`, its parameters replace the LoRA inputs through onnxruntime's native LoRA support
    (`onnxruntime.LoraAdapter` + `RunOptions.add_active_adapter`), the path genai itself uses.
    """
    import onnxruntime as ort

    folder = Path(folder)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _runtime_error(f"onnxruntime cannot load {folder / 'model.onnx'}: {_ort_reason(exc)}") from exc
    # The builder's past inputs are (batch, kv_heads, past_len, 'kv_cache_dim'): head size from genai_config.
    decoder = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32}
    n = len(prompt_ids)
    feeds: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():  # LoRA inputs are overridable initializers: not listed, not required
        dtype = dtypes.get(inp.type, np.float32)
        if inp.name == "input_ids":
            feeds[inp.name] = np.asarray([list(prompt_ids)], dtype=dtype)
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones((1, n), dtype=dtype)
        elif inp.name == "position_ids":
            feeds[inp.name] = np.arange(n, dtype=dtype)[None]
        elif inp.name.startswith("past_key_values."):
            feeds[inp.name] = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), dtype=dtype)
        else:
            raise _runtime_error(f"cannot feed graph input {inp.name} of {folder / 'model.onnx'}")
    run_options = ort.RunOptions()
    if adapter is not None:
        manifest = folder / MANIFEST
        lora = json.loads(manifest.read_text(encoding="utf-8")).get("lora_inputs", {}) if manifest.is_file() else None
        check_adapter_file(Path(adapter), lora)
        lora_adapter = ort.LoraAdapter()
        try:
            lora_adapter.Load(str(adapter))
        except Exception as exc:
            raise _runtime_error(f"{adapter} is not a valid .onnx_adapter file: {_ort_reason(exc)}") from exc
        run_options.add_active_adapter(lora_adapter)
    names = [o.name for o in sess.get_outputs()]
    return np.asarray(sess.run([names[0]], feeds, run_options)[0])[0]
