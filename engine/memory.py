"""How much memory a training run needs, said before it starts.

`estimate(stage, cfg, store)` adds up, in bytes, from the model's config alone (its
parameters counted on the `meta` device: nothing is loaded) and the run's settings:

    runtime      the libraries a run imports (CPU) or the CUDA context (GPU)
    weights      parameters × bytes per parameter of the dtype, or of the 4/8-bit format
                 (4-bit NF4 with double quantisation: ½ byte + 0.127 bit of constants per
                 weight of a decoder layer's linear layers; the rest, embeddings and head,
                 kept in fp32 by PEFT's k-bit preparation)
    adapters     LoRA parameters (r · (in + out) per target) and the scalar heads, fp32,
                 with their gradients and AdamW's two moments: 16 bytes each
    activations  what autograd keeps for the backward pass, per token and layer
                 (ACT_H · h + ACT_I · i + ACT_DROPOUT · h per LoRA target when dropout > 0),
                 for the sequences of one training pass (batch × length); with gradient
                 checkpointing only each layer's input plus one layer's full set
    logits       the LM head's output over the kept positions and vocabulary, with its
                 log-softmax and gradient (LOGIT_COPIES × positions × V × 4 bytes)
    generation   the KV cache of sampling (2 · layers · kv_heads · head_dim per token) and
                 the no-grad scoring passes (reward, reference, old log-probs): the
                 largest of them, since they run one after another
    working      buffers the passes allocate and free (WORKING × activations on a GPU):
                 what the caching allocator holds at the peak beyond what autograd keeps
                 (on the CPU counted in `runtime`, a measured constant)

`length` is the longest sequence the run will see: max_length, or, with a store, the
longest tokenised row of the dataset when that is shorter (a batch pads to its longest row).
The constants were fitted on the embedded model on a CPU: tests/test_memory.py (opt-in,
RLHF_LAB_MEMORY_PEAKS=1) compares the total with the measured peak of one step of each
stage; reward, DPO, PPO and GRPO came within ±25%, SFT 1.19–1.65× over (it counts the
longest batch, one step sees a shorter one). On a GPU they are not yet checked
(bench/gpu_fit.py).
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import MemoryEstimateError  # noqa: F401 - raised by check_fits

STAGES = ("sft", "reward", "dpo", "ppo", "grpo")  # the stages estimated (every one that trains)
GB = 2 ** 30
MB = 2 ** 20

# activations kept per token and decoder layer, in elements (counted with
# torch.autograd.graph.saved_tensors_hooks on a Llama: norms, rotary q/k, attention
# output, the MLP's gate/up/act; LoRA dropout keeps its output and mask per target)
ACT_H, ACT_I, ACT_DROPOUT = 3.0, 3.0, 1.75
LOGIT_COPIES = 3          # logits, log-softmax, their gradient
# buffers allocated and freed within a pass, × activations: what the CUDA caching allocator
# keeps beyond live tensors (not yet measured: bench/gpu_fit.py); on the CPU it is in
# CPU_RUNTIME, measured
WORKING = {"cuda": 0.3}
# transformers, peft, accelerate and the tokenizer beside torch (190 MB measured), and what
# the CPU allocator holds beyond live tensors at a run's peak (fitted on the embedded model:
# SFT, reward and DPO's peaks each sit 450–600 MB above weights + activations + logits)
CPU_RUNTIME = 550 * MB
CUDA_CONTEXT = 600 * MB   # the CUDA context and kernels, outside torch's allocator
NF4_BYTES = 0.5 + 0.127 / 8
INT8_BYTES = 1.0 + 4 / 64


@dataclass
class ModelShape:
    """What the estimate needs to know about a model, read from its config."""
    name: str
    architecture: str
    parameters: int
    layer_linear: int       # parameters of the decoder layers' linear layers (quantisable)
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lora_per_layer: dict = field(default_factory=dict)  # target name -> (in, out)


def model_shape(spec: str | None, config: Any = None) -> ModelShape:
    """The shape of a model from its config: parameters counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.inference.models import display_name, load_config

    config = config or load_config(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    layer_linear, per_layer = 0, {}
    for name, module in model.named_modules():
        conv1d = type(module).__name__ == "Conv1D"  # GPT-2's linear layers, weight [in, out]
        if not (isinstance(module, torch.nn.Linear) or conv1d):
            continue
        parts = name.split(".")
        numbered = [k for k, p in enumerate(parts) if p.isdigit()]
        if not numbered:  # the LM head, a projection outside the decoder layers
            continue
        layer_linear += module.weight.numel()
        if parts[numbered[0]] == "0":  # the first layer: one layer's LoRA targets
            rows, cols = module.weight.shape
            per_layer[parts[-1]] = (rows, cols) if conv1d else (cols, rows)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", None) or getattr(text, "n_embd"))
    heads = int(getattr(text, "num_attention_heads", None) or getattr(text, "n_head"))
    layers = int(getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer"))
    inter = int(getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
                or 4 * hidden)
    kv = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    return ModelShape(display_name(spec or "embedded"), text.model_type, params, layer_linear,
                      hidden, inter, layers, heads, kv, head_dim, int(text.vocab_size),
                      per_layer)


@functools.lru_cache(maxsize=8)
def _cached_shape(spec: str) -> ModelShape:
    return model_shape(spec)


@dataclass
class Workload:
    """The sequences of a run's passes: what the stage's settings make of its data."""
    train_seqs: int          # sequences in one pass with gradients
    train_length: int        # their (padded) length
    logit_positions: int     # positions per sequence whose logits the loss reads (0: none)
    nograd_seqs: int = 0     # the largest pass without gradients (reference, scoring)
    nograd_length: int = 0
    nograd_logits: int = 0   # logit positions per sequence of that pass
    gen_seqs: int = 0        # sequences sampled at once
    gen_length: int = 0      # prompt + new tokens


@dataclass
class Estimate:
    stage: str
    device: str
    parts: dict            # name -> bytes
    total: int
    free: int | None       # bytes free on the device now (None: unknown)
    checkpointing: bool    # whether the estimate counts on gradient checkpointing
    quantization: str
    model: dict
    workload: dict
    without_checkpointing: int | None = None  # the total with checkpointing off

    @property
    def fits(self) -> bool:
        return self.free is None or self.total <= self.free

    def to_json(self) -> dict:
        out = asdict(self)
        out["total_gb"] = round(self.total / GB, 2)
        out["free_gb"] = None if self.free is None else round(self.free / GB, 2)
        out["parts_gb"] = {k: round(v / GB, 3) for k, v in self.parts.items()}
        out["fits"] = self.fits
        return out


# -- the device ---------------------------------------------------------------------------
def free_memory(device) -> int | None:
    """Bytes free on the device now: CUDA's free memory, else the system's available RAM
    (CPU and MPS share it). `RLHF_LAB_MEMORY_GB` caps it (leave room for other programs)."""
    import torch

    device = torch.device(device)
    free = None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
    else:
        try:
            import psutil

            free = int(psutil.virtual_memory().available)
        except Exception:  # noqa: BLE001 - unknown: no refusal
            free = None
    cap = os.environ.get("RLHF_LAB_MEMORY_GB")
    if cap:
        free = min(free, int(float(cap) * GB)) if free is not None else int(float(cap) * GB)
    return free


def bytes_per_param(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


# -- the workload of each stage -------------------------------------------------------------
def _longest(store, cfg, spec: str | None) -> tuple[int | None, int | None, int | None]:
    """(longest prompt + answer, longest prompt, longest answer) of the run's dataset in
    tokens, or Nones when the dataset or the tokenizer is not at hand."""
    if store is None or not getattr(cfg, "dataset", None):
        return None, None, None
    try:
        from engine.data import curation
        from engine.inference.chat import encode_prompt
        from engine.inference.models import load_tokenizer

        rows = curation.iter_rows(store, cfg.dataset, None)
        rows = list(rows)
        tok = load_tokenizer(spec)
    except Exception:  # noqa: BLE001 - no data or no tokenizer yet: the settings' bounds
        return None, None, None
    if not rows:
        return None, None, None
    overhead = len(encode_prompt(tok, "")) + 2  # the template's own tokens, EOS
    longest, prompt_longest, answer_longest = 0, 0, 0
    texts = []
    for r in rows:
        prompt = r.get("prompt")
        ptext = prompt if isinstance(prompt, str) else " ".join(
            str(m.get("content", "")) for m in prompt or [])
        answers = [r.get(k) for k in ("response", "chosen", "rejected") if r.get(k)]
        texts.append((ptext, answers))
    flat = [p for p, _ in texts] + [a for _, ans in texts for a in ans]
    ids = tok(flat, add_special_tokens=False)["input_ids"]
    n = len(texts)
    pos = n
    for i, (_, answers) in enumerate(texts):
        p = len(ids[i]) + overhead
        prompt_longest = max(prompt_longest, p)
        for _ in answers:
            longest = max(longest, p + len(ids[pos]))
            answer_longest = max(answer_longest, len(ids[pos]) + 2)
            pos += 1
    return longest or None, prompt_longest or None, answer_longest or None


def workload(stage: str, cfg, store=None) -> Workload:
    """The passes a stage's settings make: sequences and lengths with and without gradients."""
    longest, prompt_longest, answer = _longest(store, cfg, getattr(cfg, "model", None))
    if stage == "dpo":  # lean rows: one pair (prompt once) of ROW_TOKENS at a time, the LM
        # head chunked over the scored positions (engine.training.dpo)
        from engine.training.dpo import ROW_TOKENS

        L = min(cfg.max_length, longest) if longest else cfg.max_length
        row = max(ROW_TOKENS, 2 * L)
        return Workload(1, row, 0, 1, row, 0)
    if stage in ("sft", "reward"):
        L = min(cfg.max_length, longest) if longest else cfg.max_length
        seqs = cfg.batch_size * (1 if stage == "sft" else 2)
        # SFT's LM head runs over the response window only (engine.training.sft)
        return Workload(seqs, L, min(L, answer or L) if stage == "sft" else 0)
    if stage in ("ppo", "grpo"):
        P = min(cfg.max_prompt_length, prompt_longest) if prompt_longest \
            else cfg.max_prompt_length
        T = cfg.max_new_tokens
        n = cfg.batch_size * (cfg.group_size if stage == "grpo" else 1)
        mb = max(1, n // cfg.minibatches)
        return Workload(mb, P + T, T, n, P + T, T, gen_seqs=n, gen_length=P + T)
    raise ValueError(f"no memory estimate for stage {stage!r}")


# -- the estimate ---------------------------------------------------------------------------
def lora_parameters(shape: ModelShape, lora) -> tuple[int, int]:
    """(LoRA parameters, targets per layer) of `lora` (engine.schema.LoraSettings)."""
    targets = lora.target_modules or _default_targets(shape)
    if targets in (["all-linear"], "all-linear"):
        chosen = list(shape.lora_per_layer)
    else:
        chosen = [t for t in targets if t in shape.lora_per_layer]
    per_layer = sum(lora.r * (i + o) for t in chosen for i, o in [shape.lora_per_layer[t]])
    return per_layer * shape.layers, len(chosen)


def _default_targets(shape: ModelShape) -> list[str]:
    from engine.inference.models import _TARGETS_BY_ARCH

    if shape.architecture in _TARGETS_BY_ARCH:
        return _TARGETS_BY_ARCH[shape.architecture]
    wanted = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj") if n in shape.lora_per_layer]
    return wanted or ["all-linear"]


def estimate(stage: str, cfg, store=None, device=None, shape: ModelShape | None = None,
             free: int | None | str = "measure") -> Estimate:
    """The memory a run of `stage` with settings `cfg` needs on `device` (see the module
    docstring). `gradient_checkpointing="auto"` counts on checkpointing only when the run
    would not fit without it."""
    import torch

    from engine.inference.models import pick_device, pick_dtype

    device = torch.device(device) if device is not None else pick_device()
    shape = shape or _cached_shape(cfg.model or "embedded")
    work = workload(stage, cfg, store)
    if free == "measure":
        free = free_memory(device)
    mode = getattr(cfg, "gradient_checkpointing", "off")
    plain = _total(shape, work, cfg, device, checkpointing=False)
    use = mode == "on" or (mode == "auto" and free is not None and sum(plain.values()) > free)
    parts = _total(shape, work, cfg, device, checkpointing=True) if use else plain
    return Estimate(stage, str(device), parts, sum(parts.values()), free, use,
                    getattr(cfg, "quantization", "none"),
                    {"name": shape.name, "architecture": shape.architecture,
                     "parameters": shape.parameters, "dtype": str(pick_dtype(device))
                     .replace("torch.", "")},
                    asdict(work), sum(plain.values()) if use else None)


def _total(shape: ModelShape, work: Workload, cfg, device, checkpointing: bool) -> dict:
    import torch

    from engine.inference.models import pick_dtype

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        dtype = torch.bfloat16  # an estimate for a (bf16) GPU asked on a machine without one
    else:
        dtype = pick_dtype(device)
    s = bytes_per_param(dtype)
    quant = getattr(cfg, "quantization", "none")
    h, i, Lyr, V = shape.hidden, shape.intermediate, shape.layers, shape.vocab
    if quant == "4bit" or quant == "8bit":
        rest = shape.parameters - shape.layer_linear
        per = NF4_BYTES if quant == "4bit" else INT8_BYTES
        weights = shape.layer_linear * per + rest * 4  # PEFT's k-bit preparation: rest fp32
        act_bytes = 4  # hidden states stay in the fp32 of the prepared embeddings
    else:
        weights = shape.parameters * s
        act_bytes = s
    lora, targets = lora_parameters(shape, cfg.lora)
    head = shape.hidden + 1 if cfg.__class__.__name__ in ("RewardConfig", "PPOConfig") else 0
    adapters = (lora + head) * 16 + (lora * 4 if _has_reference_adapter(cfg) else 0)
    dropout = float(getattr(cfg.lora, "dropout", 0.0) or 0.0)
    per_token_layer = (ACT_H * h + ACT_I * i + (ACT_DROPOUT * h * targets if dropout > 0
                                                  else 0)) * act_bytes
    tokens = work.train_seqs * work.train_length
    if checkpointing:
        activations = tokens * (Lyr * h * act_bytes + per_token_layer)
    else:
        activations = tokens * Lyr * per_token_layer
    logits = work.train_seqs * work.logit_positions * V * 4 * LOGIT_COPIES
    kv = 2 * Lyr * shape.kv_heads * shape.head_dim * s
    cache = work.gen_seqs * work.gen_length * kv
    nograd = work.nograd_seqs * (work.nograd_length * h * act_bytes * 4
                                 + work.nograd_logits * V * 4 * 2)
    runtime = CUDA_CONTEXT if str(device).startswith("cuda") else CPU_RUNTIME
    return {"runtime": int(runtime), "weights": int(weights), "adapters": int(adapters),
            "activations": int(activations), "logits": int(logits),
            "generation": int(max(cache, nograd)),
            "working": int(WORKING.get(device.type, 0.0) * activations)}


def _has_reference_adapter(cfg) -> bool:
    return getattr(cfg, "sft_run", None) is not None


# -- what to change -------------------------------------------------------------------------
def advice(est: Estimate, cfg) -> list[str]:
    """What would make a run that does not fit fit, in the settings' own names."""
    out = []
    if hasattr(cfg, "batch_size"):
        out.append(f"a smaller batch_size (now {cfg.batch_size})")
    for name in ("max_length", "max_new_tokens", "group_size", "max_prompt_length"):
        if hasattr(cfg, name):
            out.append(f"a smaller {name} (now {getattr(cfg, name)})")
    if not est.checkpointing and getattr(cfg, "gradient_checkpointing", "on") != "on":
        out.append("gradient_checkpointing=on")
    if est.quantization == "none" and est.device.startswith("cuda"):
        out.append("quantization=4bit")
    elif est.quantization == "none":
        out.append("quantization=4bit on a CUDA GPU")
    return out


def refusal(est: Estimate, cfg) -> str:
    parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in est.parts.items() if v)
    ck = ", with gradient checkpointing" if est.checkpointing else ""
    return (f"this run needs about {est.total / GB:.1f} GB ({parts} GB{ck}) but the device "
            f"({est.device}) has {est.free / GB:.1f} GB free; try " + "; ".join(advice(est, cfg)))


def check_fits(stage: str, cfg, store=None, device=None, log=None) -> Estimate:
    """The estimate at a run's start: raises MemoryEstimateError (nothing loaded yet) when it
    exceeds the free memory; logs it otherwise."""
    est = estimate(stage, cfg, store, device)
    if not est.fits:
        raise MemoryEstimateError(refusal(est, cfg))
    if log is not None:
        free = "" if est.free is None else f" of {est.free / GB:.1f} GB free"
        log(f"memory estimate: {est.total / GB:.2f} GB{free} ("
            + ", ".join(f"{k} {v / GB:.2f}" for k, v in est.parts.items() if v) + " GB)"
            + ("; gradient checkpointing on" if est.checkpointing else ""))
    return est
