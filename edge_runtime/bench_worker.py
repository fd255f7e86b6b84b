"""One benchmark configuration in a fresh process: load, check outputs, warm up, time, print one JSON record.

`dynalora bench` (bench.py) starts one of these per configuration so that peak RSS measures this
configuration alone (nothing loaded by an earlier one is still resident). Run by hand:

    python -m dynalora.edge_runtime.bench_worker --spec '{"export": "exports/rt", "engine": "onnxruntime",
        "provider": "CPUExecutionProvider", "threads": 1, "batch": 1, "seq": 32, "inputs": "in.npz",
        "repeats": 20, "warmup": 3}'

The input ids come from an .npz written by the parent, so the onnxruntime and torch workers see
identical tokens, and the onnxruntime worker never imports transformers or torch (they would add
hundreds of MB to its peak RSS). stdout carries exactly one JSON line: the record, or {"error": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.errors import DynaloraError
from dynalora.edge_runtime.feeds import ort_feeds
from dynalora.edge_runtime.timing import latency_stats, time_calls

TORCH_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class BenchError(DynaloraError):
    """A benchmark that cannot run as asked (bad flags, missing torch/ weights, failed validation)."""


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM from /proc/self/status, the high-water mark of this process image only. Not
    ru_maxrss: Linux carries the parent's peak across fork+exec into the child's ru_maxrss, so a
    worker started by a parent that had loaded torch would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1024**2


def model_size_mb(folder: Path, model_file: Path | None, engine: str) -> float:
    """Bytes on disk of what the engine loads: the graph file (.onnx or .ort) + its external data, or the torch/
    weights."""
    if engine == "torch":
        paths = [p for p in (folder / "torch").rglob("*") if p.suffix in TORCH_WEIGHT_SUFFIXES]
    else:
        assert model_file is not None
        paths = [model_file] + [p for p in model_file.parent.glob(model_file.name + ".data")]
        paths += [p for p in model_file.parent.glob(model_file.name + "_data")]
        paths += [p for p in (folder / "router.onnx",) if p.is_file()]  # a causal-LM fusion's router graph
    return sum(p.stat().st_size for p in paths) / 1024**2


class OnnxEngine:
    """The export folder through dynalora's Predictor (no tokenizer, no torch in this process)."""

    name = "onnxruntime"

    def __init__(self, folder: Path, provider: str, threads: int, profile: str | None, allow_fallback: bool,
                 adapter: str | None = None, variant: str | None = None) -> None:
        from dynalora.edge_runtime.predictor import load, model_variant

        # Checksums were verified once by the parent: re-hashing in every worker only costs time.
        self.predictor = load(folder, provider=provider, threads=threads, profile=profile,
                              allow_fallback=allow_fallback, verify=False, eager_tokenizer=False, variant=variant)
        self.model_file = model_variant(folder, self.predictor.manifest, variant)[0]
        if adapter:
            self.predictor.use_adapter(adapter)
        self.load_s = self.predictor.load_seconds
        self.providers_used = self.predictor.providers

    def route(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray | None, float]:
        """A causal-LM fusion's routing of the batch (router.onnx) and its time; (None, 0) for other exports."""
        if self.predictor.router is None:
            return None, 0.0
        feeds = {n: arrays[n].astype(np.int64) for n in ("input_ids", "attention_mask")}
        t0 = time.perf_counter()
        weights = self.predictor.router.run(["fusion_weights"], feeds)[0]
        return weights, time.perf_counter() - t0

    def forward(self, arrays: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
        feeds = ort_feeds(self.predictor.session.get_inputs(), arrays, self.predictor.head_dim)  # KV graph: prefill
        weights, _ = self.route(arrays)
        if weights is not None:
            feeds["fusion_weights"] = weights
        index = self.predictor.output_names.index("logits") if "logits" in self.predictor.output_names else 0
        return lambda: self.predictor.run_raw(feeds)[index]

    def decode(self, arrays: dict[str, np.ndarray], new_tokens: int) -> tuple[float, float, int, float]:
        """(prefill s, decode s, decode steps, time to first token s): our first token is the argmax of the
        prefill logits, so TTFT = routing (a fusion) + prefill."""
        weights, route_s = self.route(arrays)
        out = self.predictor.greedy_decode(arrays["input_ids"].astype(np.int64), new_tokens, fusion_weights=weights)
        return out["prefill_s"], out["decode_s"], out["decode_steps"], route_s + out["prefill_s"]

    def sync(self) -> None:
        pass


class TorchEngine:
    """The merged PyTorch weights the exporter saved in EXPORT/torch (Hugging Face format)."""

    name = "torch"

    def __init__(self, folder: Path, problem: str, threads: int, device: str) -> None:
        source = folder / "torch"
        if not source.is_dir() or not any(p.suffix in TORCH_WEIGHT_SUFFIXES for p in source.iterdir()):
            raise BenchError(f"--compare-torch needs the PyTorch weights in {source} (written by `dynalora export` "
                             "for merged exports); re-export or drop --compare-torch")
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        t0 = time.perf_counter()
        cls = AutoModelForCausalLM if problem == "causal-lm" else AutoModelForSequenceClassification
        self.model = cls.from_pretrained(source, local_files_only=True).to(self.device).eval()
        self.sync()
        self.load_s = time.perf_counter() - t0
        self.providers_used = [f"torch:{device}"]
        self.causal = problem == "causal-lm"

    def _tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        keys = ["input_ids", "attention_mask"] + ([] if self.causal else ["token_type_ids"])
        return {k: self.torch.from_numpy(arrays[k].astype(np.int64)).to(self.device) for k in keys if k in arrays}

    def forward(self, arrays: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
        tensors = self._tensors(arrays)

        def run() -> np.ndarray:
            with self.torch.inference_mode():
                return self.model(**tensors).logits.float().cpu().numpy()

        return run

    def decode(self, arrays: dict[str, np.ndarray], new_tokens: int) -> tuple[float, float, int]:
        tensors = self._tensors(arrays)
        ids, mask = tensors["input_ids"], tensors["attention_mask"]
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=True)
            self.sync()
            prefill_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(new_tokens - 1):
                next_ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)
                mask = self.torch.cat([mask, self.torch.ones_like(next_ids)], dim=1)
                out = self.model(input_ids=next_ids, attention_mask=mask, past_key_values=out.past_key_values,
                                 use_cache=True)
            self.sync()
        return prefill_s, time.perf_counter() - t0, new_tokens - 1, prefill_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


class GenaiEngine:
    """The same folder through onnxruntime-genai (og.Model + og.Generator): its own KV cache, sampling loop and
    adapters. Threads go in through an og.Config overlay (the folder's genai_config.json is not touched). A
    causal-LM fusion is routed by router.onnx (plain onnxruntime) and its weights fed with set_model_input."""

    name = "onnxruntime-genai"

    def __init__(self, folder: Path, threads: int, adapter: str | None = None) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise BenchError(f"--genai needs onnxruntime-genai ({exc}); pip install onnxruntime-genai") from exc
        self.og = og
        t0 = time.perf_counter()
        config = og.Config(str(folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.folder = folder
        self.adapters: Any = None
        self.adapter: str | None = None
        if adapter:
            self.load_adapter(adapter)
        self.router = None
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("router_graph"):
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            self.router = ort.InferenceSession(str(folder / manifest["router_graph"]), opts,
                                               providers=["CPUExecutionProvider"])
        self.load_s = time.perf_counter() - t0
        self.providers_used = ["onnxruntime-genai:cpu"]
        self.model_file = folder / "model.onnx"

    def load_adapter(self, name: str) -> float:
        """Load the folder's adapters/NAME.onnx_adapter and make it the one later generators use; seconds taken."""
        t0 = time.perf_counter()
        if self.adapters is None:
            self.adapters = self.og.Adapters(self.model)
        self.adapters.load(str(self.folder / "adapters" / f"{name}.onnx_adapter"), name)
        self.adapter = name
        return time.perf_counter() - t0

    def _generator(self, arrays: dict[str, np.ndarray], max_length: int) -> tuple[Any, np.ndarray, float]:
        ids = arrays["input_ids"].astype(np.int32)
        params = self.og.GeneratorParams(self.model)
        # min_length = max_length: EOS is masked until the length is reached, so every run decodes n tokens
        params.set_search_options(do_sample=False, num_beams=1, batch_size=int(ids.shape[0]), max_length=max_length,
                                  min_length=max_length)
        gen = self.og.Generator(self.model, params)
        if self.adapter:
            gen.set_active_adapter(self.adapters, self.adapter)
        route_s = 0.0
        if self.router is not None:
            t0 = time.perf_counter()
            weights = self.router.run(["fusion_weights"], {n: arrays[n].astype(np.int64)
                                                           for n in ("input_ids", "attention_mask")})[0]
            route_s = time.perf_counter() - t0
            gen.set_model_input("fusion_weights", np.ascontiguousarray(weights))
        return gen, ids, route_s

    def forward(self, arrays: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
        length = int(arrays["input_ids"].shape[1]) + 1

        def run() -> np.ndarray:
            gen, ids, _ = self._generator(arrays, length)
            gen.append_tokens(ids)  # the prefill forward
            return np.asarray(gen.get_logits())

        return run

    def generate(self, arrays: dict[str, np.ndarray], new_tokens: int) -> dict[str, Any]:
        """One greedy generation of exactly `new_tokens` tokens, timed by phase (seconds): setup (generator and
        active adapter), route (router.onnx, fused folders), prefill, ttft (route + prefill + first pick), decode
        (the forwards after the first token); plus the new tokens of row 0."""
        t_setup = time.perf_counter()
        gen, ids, route_s = self._generator(arrays, int(arrays["input_ids"].shape[1]) + new_tokens)
        t0 = time.perf_counter()
        gen.append_tokens(ids)  # prefill
        t1 = time.perf_counter()
        gen.generate_next_token()  # picks token 1 from the prefill logits (no forward)
        t2 = time.perf_counter()
        steps = 0
        while not gen.is_done():
            gen.generate_next_token()  # one forward of the previous token + the greedy pick
            steps += 1
        t3 = time.perf_counter()
        return {"setup_s": t0 - t_setup - route_s, "route_s": route_s, "prefill_s": t1 - t0,
                "ttft_s": route_s + (t2 - t0), "decode_s": t3 - t2, "decode_steps": steps,
                "first_row": [int(t) for t in gen.get_sequence(0)][ids.shape[1]:]}

    def decode(self, arrays: dict[str, np.ndarray], new_tokens: int) -> tuple[float, float, int, float]:
        r = self.generate(arrays, new_tokens)
        return r["prefill_s"], r["decode_s"], r["decode_steps"], r["ttft_s"]

    def sync(self) -> None:
        pass


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration described by `spec` (see the module docstring) and return its record."""
    folder = Path(spec["export"])
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    problem = manifest["task"]["problem"]
    with np.load(spec["inputs"]) as data:
        arrays = {k: data[k] for k in data.files}
    rss_baseline = current_rss_mb()
    if spec["engine"] == "torch":
        engine: OnnxEngine | TorchEngine | GenaiEngine = TorchEngine(folder, problem, spec["threads"],
                                                                     spec.get("device", "cpu"))
    elif spec["engine"] == "genai":
        engine = GenaiEngine(folder, spec["threads"], spec.get("adapter"))
    else:
        engine = OnnxEngine(folder, spec["provider"], spec["threads"], spec.get("profile"),
                            spec.get("allow_fallback", False), spec.get("adapter"), spec.get("variant"))
    run = engine.forward(arrays)
    t0 = time.perf_counter()
    first = run()
    engine.sync()
    first_run_ms = (time.perf_counter() - t0) * 1e3  # cold: the first inference after load (allocations, caches)
    if not np.all(np.isfinite(first)):
        raise BenchError(f"{engine.name} produced NaN/inf outputs on the synthetic batch; the export is broken")
    raw = time_calls(run, spec["warmup"], spec["repeats"], engine.sync)
    latency = latency_stats(raw)
    batch = spec["batch"]
    record: dict[str, Any] = {
        "engine": engine.name, "provider": spec["provider"] if engine.name == "onnxruntime" else engine.providers_used[0],
        "providers_used": engine.providers_used, "threads": spec["threads"], "batch": batch, "seq": spec["seq"],
        "profile": spec.get("profile"), "adapter": spec.get("adapter"),
        "latency_ms": latency, "throughput": batch / (latency["mean"] / 1e3), "load_s": engine.load_s,
        "first_run_ms": first_run_ms, "variant": spec.get("variant") or "onnx" if engine.name == "onnxruntime" else None,
        "model_mb": model_size_mb(folder, getattr(engine, "model_file", None), engine.name),
        "precision": manifest.get("precision", "fp32"), "kind": manifest["kind"], "problem": problem,
        "repeats": spec["repeats"], "warmup": spec["warmup"], "rss_baseline_mb": rss_baseline,
    }
    new_tokens = spec.get("decode_tokens", 0)
    if problem == "causal-lm" and new_tokens > 1:
        runs = [engine.decode(arrays, new_tokens) for _ in range(max(1, min(3, spec["repeats"])))]
        prefill_s, ttft_s = float(np.median([r[0] for r in runs])), float(np.median([r[3] for r in runs]))
        decode_s, steps = float(np.sum([r[1] for r in runs])), int(np.sum([r[2] for r in runs]))
        record.update(prefill_ms=prefill_s * 1e3, ttft_ms=ttft_s * 1e3, decode_tokens=new_tokens,
                      decode_tokens_per_s=batch * steps / decode_s if decode_s > 0 else float("inf"))
    record["peak_rss_mb"] = peak_rss_mb()  # last: includes everything this configuration touched
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one dynalora bench configuration (started by `dynalora bench`)")
    parser.add_argument("--spec", required=True, help="JSON object describing the configuration")
    args = parser.parse_args(argv)
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries that print must not corrupt the one JSON line on stdout
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        record = run_config(json.loads(args.spec))
    except DynaloraError as exc:
        out.write(json.dumps({"error": str(exc), "error_type": type(exc).__name__}) + "\n")
        return exc.exit_code
    out.write(json.dumps(record) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
