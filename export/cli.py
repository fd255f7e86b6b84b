"""`dynalora export ...` subcommands (registered by dynalora/cli.py through `register`).

    dynalora export merged   --run DIR --out EXPORT [--quantize int8|qdq-int8|fp16] [--calibration-samples N]
                             [--opset N] [--overwrite]
    dynalora export adapters --runs DIR_A DIR_B ... --out EXPORT [--opset N] [--overwrite]
    dynalora export base     --model M --out EXPORT [--task-kind text-generation-with-past] [--quantize int8]
    dynalora export base|merged ... --runtime genai [--quantize int8|int4]   (onnxruntime-genai folder: export/genai_export.py)
    dynalora export fused    --fuse FUSE --out EXPORT [--opset N] [--overwrite]      (see export/fused.py)

A user error (not a run, no tokenizer, unsupported architecture, existing --out) is a DynaloraError:
the main CLI prints one line and exits with code 2, and nothing is left on disk.
"""

from __future__ import annotations

import argparse
from typing import Any

from dynalora.export.common import add_output_flags, report
from dynalora.export.mobile import add_target_flag
from dynalora.export.quantize import DEFAULT_CALIBRATION_SAMPLES


def register(subparsers: Any) -> None:
    export = subparsers.add_parser("export", help="export runs to ONNX for dynalora.edge_runtime",
                                   description="Export finished runs (or a base model) to ONNX.")
    sub = export.add_subparsers(dest="export_kind", required=True)

    merged = sub.add_parser("merged", help="merge a run's adapters into the base weights and export one graph")
    merged.add_argument("--run", required=True, help="run folder written by `dynalora train`")
    merged.add_argument("--quantize", choices=("int8", "qdq-int8", "fp16", "int4"), default=None,
                        help="post-training quantisation: int8 (dynamic, CPU), qdq-int8 (static QDQ, for NPU execution "
                             "providers; calibrated on the run's training texts), fp16; int4 with --runtime genai")
    merged.add_argument("--calibration-samples", type=int, default=None, metavar="N",
                        help=f"qdq-int8: training texts to calibrate on (default {DEFAULT_CALIBRATION_SAMPLES})")
    merged.add_argument("--no-optimize", dest="optimize", action="store_false", help="skip graph optimisation")
    add_output_flags(merged)
    add_target_flag(merged)
    _add_runtime_flag(merged)
    merged.set_defaults(func=_cmd_merged)

    adapters = sub.add_parser("adapters", help="one base graph + a native onnxruntime LoRA adapter per run")
    adapters.add_argument("--runs", nargs="+", required=True, help="run folders sharing one base model")
    add_output_flags(adapters, opset_default="18")
    add_target_flag(adapters)
    _add_runtime_flag(adapters)
    adapters.add_argument("--quantize", choices=("int8", "int4"), default=None,
                          help="--runtime genai: block-wise weight-only quantisation of the base decoder (LoRA stays fp32)")
    adapters.set_defaults(func=_cmd_adapters)

    base = sub.add_parser("base", help="export a base model without a run (e.g. a causal LM for decode benchmarks)")
    base.add_argument("--model", required=True, help="built-in name (smollm2-135m, minilm) or model folder")
    base.add_argument("--task-kind", default="text-generation-with-past",
                      help="optimum task (text-generation-with-past, text-classification, ...)")
    base.add_argument("--quantize", choices=("int8", "int4"), default=None,
                      help="post-training quantisation (int4: --runtime genai)")
    add_output_flags(base)
    _add_runtime_flag(base)
    base.set_defaults(func=_cmd_base)

    from dynalora.export.fused import add_fused_parser  # `export fused`: see export/fused.py

    add_fused_parser(sub)


def _add_runtime_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=("ort", "genai"), default="ort",
                        help="causal LMs: ort = optimum's graph for dynalora's runtime (default); genai = onnxruntime-genai's "
                             "model builder, a folder both onnxruntime-genai and dynalora's runtime load (fp32, int8, int4)")
    add_block_size_flag(parser)


def add_block_size_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block-size", type=int, choices=(16, 32, 64, 128), default=None,
                        help="--runtime genai with --quantize int8|int4: weights per quantisation block (default 32; "
                             "16 = closer to fp32, larger files: SmolLM2-135M int4 perplexity +2.3%% vs +10.9%% at 32, "
                             "103 vs 87 MB)")


def check_block_size(args: argparse.Namespace) -> None:
    from dynalora.errors import ConfigError

    if getattr(args, "block_size", None) is not None and args.quantize not in ("int8", "int4"):
        raise ConfigError("--block-size applies to --runtime genai with --quantize int8 or int4")


def _genai(args: argparse.Namespace, model: str | None, run: str | None) -> int:
    from dynalora.errors import ConfigError
    from dynalora.export.genai_export import export_genai

    for flag, bad in (("--target", getattr(args, "target", None)), ("--opset", getattr(args, "opset", None)),
                      ("--calibration-samples", getattr(args, "calibration_samples", None))):
        if bad is not None:
            raise ConfigError(f"{flag} does not apply to --runtime genai (the genai builder decides the graph)")
    if getattr(args, "task_kind", "text-generation-with-past") != "text-generation-with-past":
        raise ConfigError("--runtime genai exports causal LMs (text generation with the KV cache) only")
    check_block_size(args)
    manifest = export_genai(model or "", args.out, quantize=args.quantize, overwrite=args.overwrite, run_dir=run,
                            block_size=args.block_size)
    return report(args.out, manifest)


def _cmd_merged(args: argparse.Namespace) -> int:
    from dynalora.errors import ConfigError
    from dynalora.export.merged import export_merged

    if args.runtime == "genai":
        return _genai(args, None, args.run)
    if args.quantize == "int4":
        raise ConfigError("--quantize int4 needs --runtime genai (block-wise 4-bit MatMulNBits from onnxruntime-genai's builder)")
    if args.block_size is not None:
        raise ConfigError("--block-size applies to --runtime genai")
    manifest = export_merged(args.run, args.out, quantize=args.quantize, opset=args.opset, overwrite=args.overwrite,
                             optimize=args.optimize, target=args.target, calibration_samples=args.calibration_samples)
    return report(args.out, manifest)


def _cmd_adapters(args: argparse.Namespace) -> int:
    from dynalora.errors import ConfigError
    from dynalora.export.adapters import export_adapters

    if args.runtime == "genai":
        for flag, bad in (("--target", args.target), ("--opset", args.opset)):
            if bad is not None:
                raise ConfigError(f"{flag} does not apply to --runtime genai (the genai builder decides the graph)")
        from dynalora.export.genai_export import export_genai_adapters

        check_block_size(args)
        return report(args.out, export_genai_adapters(args.runs, args.out, quantize=args.quantize,
                                                      overwrite=args.overwrite, block_size=args.block_size))
    if args.quantize is not None or args.block_size is not None:
        raise ConfigError("--quantize / --block-size on `export adapters` need --runtime genai")
    return report(args.out, export_adapters(args.runs, args.out, opset=args.opset, overwrite=args.overwrite,
                                            target=args.target))


def _cmd_base(args: argparse.Namespace) -> int:
    from dynalora.errors import ConfigError
    from dynalora.export.merged import export_base

    if args.runtime == "genai":
        return _genai(args, args.model, None)
    if args.quantize == "int4":
        raise ConfigError("--quantize int4 needs --runtime genai (block-wise 4-bit MatMulNBits from onnxruntime-genai's builder)")
    if args.block_size is not None:
        raise ConfigError("--block-size applies to --runtime genai")
    manifest = export_base(args.model, args.out, task_kind=args.task_kind, quantize=args.quantize, opset=args.opset,
                           overwrite=args.overwrite)
    return report(args.out, manifest)
