"""GGUF out of the lab: a run's adapter merged into its base, written with the `gguf`
library (GGUFWriter, gguf.quants) for llama.cpp and Ollama.

Layout, inside an export folder:

    <out>/gguf/<name>-f16.gguf, <name>-q8_0.gguf, <name>-q4_0.gguf   (those asked for)
    <out>/gguf/Modelfile     Ollama: FROM the Q8_0 file (else the first), TEMPLATE, stops
    <out>/gguf/README.md     the `llama-cli` and `ollama create` commands

Metadata: when the base is the embedded model (itself a GGUF), every key of that file is
carried over (read with gguf.GGUFReader): tokenizer, merges, chat template, hyper-
parameters; only the file type changes. A Hugging Face folder base gets its metadata built
from its config and tokenizer, for the Llama family (LlamaForCausalLM, Qwen2ForCausalLM);
any other architecture is refused with a message naming it.

Tensors use llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, output; taken
from gguf.TensorNameMap). For Llama, llama.cpp stores q and k with the rotary halves
interleaved (`permute_qk`); readers (llama.cpp, transformers' GGUF loader) undo it.
Norms and biases stay float32; a matrix whose rows do not split into whole quant blocks
stays F16 (as llama.cpp's converter does); in Q4_0 files the embeddings (and output)
are Q8_0, the part of the model that suffers most from 4 bits.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

QUANTS = ("f16", "q8_0", "q4_0")
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
PERMUTED_QK = ("llama",)           # archs whose q/k llama.cpp stores interleaved
CONTEXT_FOR_ESTIMATE = 4096        # llama-cli's default context, for the memory estimate
RUNTIME_OVERHEAD = 0.15            # compute buffers and the like, as a share of the weights
BITS = {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}   # bits per weight of a quantised matrix


class GGUFExportError(ValueError):
    """A model or quantisation this export cannot write, said plainly."""


def _gguf():
    import gguf  # numpy only; imported lazily like transformers

    return gguf


def qtype_of(quant: str):
    g = _gguf()
    try:
        return {"f16": g.GGMLQuantizationType.F16, "q8_0": g.GGMLQuantizationType.Q8_0,
                "q4_0": g.GGMLQuantizationType.Q4_0}[quant]
    except KeyError:
        raise GGUFExportError(f"unknown GGUF type {quant!r}; choose one of "
                              f"{', '.join(QUANTS)}") from None


def file_type_of(quant: str) -> int:
    ft = _gguf().LlamaFileType
    return {"f16": ft.MOSTLY_F16, "q8_0": ft.MOSTLY_Q8_0, "q4_0": ft.MOSTLY_Q4_0}[quant]


def parse_quants(value: str | Iterable[str] | None) -> list[str]:
    """"f16,q8_0" or ["f16", "q8_0"] → ["f16", "q8_0"] (known names, in QUANTS order)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    wanted = {str(v).strip().lower() for v in items if str(v).strip()}
    for q in wanted:
        qtype_of(q)
    return [q for q in QUANTS if q in wanted]


# -- architectures ---------------------------------------------------------------------------
def gguf_arch(config) -> str:
    """llama.cpp's architecture name for a transformers config, or GGUFExportError."""
    names = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", "")
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    if not names and model_type in ("llama", "qwen2"):
        return model_type
    shown = ", ".join(names) or model_type or "unknown"
    raise GGUFExportError(
        f"GGUF export supports {', '.join(ARCHITECTURES)}; this base model is {shown}")


def permute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's layout of a Llama q/k projection: within each head, rows are reordered
    from transformers' [first rotary half | second half] to interleaved pairs, i.e.
    W.reshape(h, 2, d/2, ...).swapaxes(1, 2) with h the heads of that projection (the kv
    heads for k). transformers' GGUF loader applies the inverse."""
    if n_head_kv is not None and n_head_kv != n_head:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta or getattr(config, "rope_theta", None) or 10000.0)


def _check_rope(config) -> None:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = (params.get("rope_type") if isinstance(params, dict) else None) or \
        (scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, dict) else None)
    if kind not in (None, "default"):
        raise GGUFExportError(f"GGUF export: rope scaling {kind!r} is not supported yet")


def head_dim(config) -> int:
    return int(getattr(config, "head_dim", None)
               or config.hidden_size // config.num_attention_heads)


def gguf_tensors(state_dict: dict, config, arch: str) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) for every weight, q/k permuted where llama.cpp does."""
    g = _gguf()
    arch_enum = {"llama": g.MODEL_ARCH.LLAMA, "qwen2": g.MODEL_ARCH.QWEN2}[arch]
    names = g.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for key, tensor in state_dict.items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(f"GGUF export: no llama.cpp name for the tensor {key!r}")
        arr = tensor.detach().to("cpu").float().numpy()
        if arch in PERMUTED_QK and ".attn_q." in name:
            arr = permute_qk(arr, config.num_attention_heads)
        elif arch in PERMUTED_QK and ".attn_k." in name:
            arr = permute_qk(arr, config.num_attention_heads, config.num_key_value_heads)
        out.append((name, arr))
    return out


def encode_tensor(name: str, arr: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """The bytes (or array) to store and its GGML type (None: numpy's own, F32/F16)."""
    g = _gguf()
    if arr.ndim < 2:
        return arr.astype(np.float32), None        # norms and biases: F32, as llama.cpp
    if quant == "f16":
        return arr.astype(np.float16), None
    if quant == "q4_0" and name.split(".")[0] in ("token_embd", "output"):
        quant = "q8_0"
    qt = qtype_of(quant)
    block = g.GGML_QUANT_SIZES[qt][0]
    if arr.shape[-1] % block:
        return arr.astype(np.float16), None        # rows do not split into whole blocks
    return g.quants.quantize(arr.astype(np.float32), qt), qt


# -- metadata -------------------------------------------------------------------------------
_SKIP_KEYS = ("general.architecture", "general.file_type", "general.quantization_version",
              "general.alignment", "general.name")


def copy_metadata(writer, source: str | Path) -> dict:
    """Every key of a GGUF file onto `writer`, but those about its own encoding; returns
    the hyper-parameters it declares ({key: value}) for checking against the model."""
    g = _gguf()
    reader = g.GGUFReader(str(source))
    declared = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in _SKIP_KEYS:
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == g.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)
            declared[key] = value
    return declared


def check_declared(declared: dict, config, arch: str) -> None:
    """The source file's hyper-parameters must describe the merged model."""
    want = {"block_count": config.num_hidden_layers, "embedding_length": config.hidden_size,
            "feed_forward_length": config.intermediate_size,
            "attention.head_count": config.num_attention_heads,
            "attention.head_count_kv": config.num_key_value_heads}
    for key, value in want.items():
        got = declared.get(f"{arch}.{key}")
        if got is not None and int(got) != int(value):
            raise GGUFExportError(f"GGUF export: the base model's GGUF says {arch}.{key}="
                                  f"{got}, the merged model has {value}")


def guess_pre_tokenizer(tokenizer, embedded_tokens: list[str] | None = None,
                        embedded_pre: str | None = None) -> str:
    """llama.cpp's name of the pre-tokenizer (how text is split before BPE)."""
    vocab = tokenizer.get_vocab()
    if embedded_tokens is not None and len(vocab) == len(embedded_tokens) and \
            all(vocab.get(t) == i for i, t in enumerate(embedded_tokens[:512])):
        return embedded_pre or "default"
    if "<|begin_of_text|>" in vocab:
        return "llama-bpe"
    if "<|im_start|>" in vocab and len(vocab) > 150_000:
        return "qwen2"
    return "default"


def tokenizer_metadata(tokenizer, n_vocab: int, pre: str) -> dict[str, Any]:
    """The tokenizer.ggml.* keys of a byte-level BPE tokenizer (GPT-2 style), padded to
    the embedding's rows with unused [PADn] tokens."""
    g = _gguf()
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise GGUFExportError("GGUF export needs a byte-level BPE tokenizer (GPT-2 style); "
                              f"this one is {model.get('type')!r}")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise GGUFExportError(f"GGUF export: the tokenizer has ids up to "
                              f"{max(vocab.values())}, the embedding only {n_vocab} rows")
    by_id = {i: t for t, i in vocab.items()}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(g.TokenType.UNUSED))
        elif i in added:
            tokens.append(tok)
            types.append(int(g.TokenType.CONTROL if added[i].special
                             else g.TokenType.USER_DEFINED))
        else:
            tokens.append(tok)
            types.append(int(g.TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.add_bos_token": bool(getattr(tokenizer, "add_bos_token", False))}
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                      ("unknown", "unk_token_id"), ("padding", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = int(value)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        meta["tokenizer.chat_template"] = tokenizer.chat_template
    return meta


def add_hf_metadata(writer, config, tokenizer, arch: str, name: str,
                    pre: str = "default") -> None:
    """General, hyper-parameter and tokenizer keys built from a Hugging Face folder."""
    g = _gguf()
    _check_rope(config)
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_vocab_size(int(config.vocab_size))
    hd = head_dim(config)
    if arch == "llama":
        writer.add_rope_dimension_count(hd)
    if hd != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(hd)
        writer.add_value_length(hd)
    for key, value in tokenizer_metadata(tokenizer, int(config.vocab_size), pre).items():
        if isinstance(value, list):
            sub = g.GGUFValueType.STRING if value and isinstance(value[0], str) \
                else g.GGUFValueType.INT32
            writer.add_key_value(key, value, g.GGUFValueType.ARRAY, sub_type=sub)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)


# -- writing -----------------------------------------------------------------------------------
def write_gguf(path: Path, tensors: list[tuple[str, np.ndarray]], quant: str, arch: str,
               metadata: Callable[[Any], None], description: str = "") -> int:
    """One GGUF file: metadata (a function that adds keys to the writer), then tensors."""
    g = _gguf()
    writer = g.GGUFWriter(str(path), arch)
    metadata(writer)
    writer.add_file_type(int(file_type_of(quant)))
    if quant != "f16":
        writer.add_quantization_version(g.GGML_QUANT_VERSION)
    if description:
        writer.add_description(description)
    for name, arr in tensors:
        data, raw = encode_tensor(name, arr, quant)
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.stat().st_size


# -- sizes ---------------------------------------------------------------------------------
def weight_shapes(config) -> list[tuple[str, tuple[int, ...]]]:
    """Every weight of a Llama-family model by role, from its config (no weights loaded)."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    hd, nh, nkv = head_dim(config), config.num_attention_heads, config.num_key_value_heads
    layer = [("attn_q", (nh * hd, h)), ("attn_k", (nkv * hd, h)), ("attn_v", (nkv * hd, h)),
             ("attn_output", (h, nh * hd)), ("ffn_gate", (i, h)), ("ffn_up", (i, h)),
             ("ffn_down", (h, i)), ("norm", (h,)), ("norm", (h,))]
    shapes = [("token_embd", (v, h)), ("output_norm", (h,))]
    shapes += layer * config.num_hidden_layers
    if not getattr(config, "tie_word_embeddings", False):
        shapes.append(("output", (v, h)))
    return shapes


def estimate(config, quant: str, context: int = CONTEXT_FOR_ESTIMATE) -> dict:
    """Expected file size and memory to run it: the weights at `quant` (norms F32), plus
    the f16 KV cache of `context` tokens (2 · layers · context · kv heads · head dim · 2 B),
    plus RUNTIME_OVERHEAD of the weights for compute buffers. An estimate, not a promise."""
    total = 0.0
    for role, shape in weight_shapes(config):
        n = float(np.prod(shape))
        if len(shape) < 2:
            total += 4 * n
            continue
        bits = BITS["q8_0"] if quant == "q4_0" and role in ("token_embd", "output") \
            else BITS[quant]
        total += n * bits / 8
    ctx = min(context, int(getattr(config, "max_position_embeddings", context) or context))
    kv = 2 * config.num_hidden_layers * ctx * config.num_key_value_heads * head_dim(config) * 2
    return {"quant": quant, "file_bytes": int(total), "context": ctx,
            "memory_bytes": int(total * (1 + RUNTIME_OVERHEAD) + kv)}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# -- Ollama and the README --------------------------------------------------------------------
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n")
LLAMA3_TEMPLATE = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")


@dataclass
class ChatFormat:
    template: str | None     # Ollama's Go template, None: let Ollama read the GGUF's own
    stops: list[str]
    system: str | None       # the default system message the Jinja template inserts


def chat_format(chat_template: str | None, eos_token: str | None) -> ChatFormat:
    """Ollama's TEMPLATE for the chat template's family (ChatML, Llama 3), its stop tokens
    and the default system message; an unknown family leaves TEMPLATE to Ollama."""
    jinja = chat_template or ""
    stops = [eos_token] if eos_token else []
    if "<|im_start|>" in jinja:
        m = re.search(r"<\|im_start\|>system\\n(.*?)<\|im_end\|>", jinja) or \
            re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", jinja)
        system = m.group(1) if m and "{{" not in m.group(1) else None
        return ChatFormat(CHATML_TEMPLATE, _unique(["<|im_end|>", *stops]), system)
    if "<|start_header_id|>" in jinja:
        return ChatFormat(LLAMA3_TEMPLATE, _unique(["<|eot_id|>", *stops]), None)
    return ChatFormat(None, stops, None)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def modelfile(gguf_file: str, fmt: ChatFormat) -> str:
    lines = [f"FROM ./{gguf_file}", ""]
    if fmt.template:
        lines += [f'TEMPLATE """{fmt.template}"""', ""]
    if fmt.system:
        lines += [f'SYSTEM """{fmt.system}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in fmt.stops]
    return "\n".join(lines) + "\n"


def readme(run_name: str, files: list[dict], model_file: str, fmt: ChatFormat) -> str:
    first = files[0]["file"]
    lines = [f"# {run_name} — GGUF", "",
             "The run's LoRA adapter merged into its base model, for llama.cpp and Ollama.", "",
             "| file | type | size | memory to run (est.) |", "|---|---|---|---|"]
    lines += [f"| `{f['file']}` | {f['quant'].upper()} | {human_bytes(f['bytes'])} | "
              f"≈ {human_bytes(f['memory_bytes'])} at {f['context']} tokens |" for f in files]
    lines += ["", "Memory: weights + f16 KV cache of the context + ~15% for buffers.", "",
              "## llama.cpp", "", "```bash",
              f"llama-cli -m {first} -cnv   # chat, with the file's own chat template",
              f"llama-cli -m {first} -p \"Name three colours.\" -n 64 --temp 0",
              "```", "", "## Ollama", "", "```bash",
              f"ollama create {_ollama_name(run_name)} -f Modelfile",
              f"ollama run {_ollama_name(run_name)}", "```", "",
              f"`Modelfile` points at `{model_file}`; edit its FROM line to use another file."]
    return "\n".join(lines) + "\n"


def _ollama_name(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "rlhf-lab-model"


# -- the export ------------------------------------------------------------------------------
def export_gguf(model, tokenizer, out: Path, quants: list[str], name: str,
                source_gguf: str | Path | None = None,
                progress: Callable[[str], None] | None = None) -> dict:
    """Write `model` (a merged transformers model) as GGUF files, Modelfile and README into
    `out`. `source_gguf`: the GGUF the base was loaded from, whose metadata is carried."""
    g = _gguf()
    quants = parse_quants(quants)
    if not quants:
        raise GGUFExportError(f"GGUF export: choose at least one of {', '.join(QUANTS)}")
    config = model.config
    arch = gguf_arch(config)
    _check_rope(config)
    tensors = gguf_tensors(model.state_dict(), config, arch)
    say = progress or (lambda m: None)
    embedded_pre = embedded_tokens = None
    if source_gguf is not None:
        reader = g.GGUFReader(str(source_gguf))
        src_arch = reader.fields["general.architecture"].contents()
        if src_arch != arch:
            raise GGUFExportError(f"GGUF export: the base GGUF is {src_arch!r}, the merged "
                                  f"model {arch!r}")
        missing = {t.name for t in reader.tensors} ^ {n for n, _ in tensors}
        if missing:
            raise GGUFExportError(f"GGUF export: tensors differ from the base GGUF: "
                                  f"{sorted(missing)[:6]}")
        del reader

        def metadata(writer):
            check_declared(copy_metadata(writer, source_gguf), config, arch)
            writer.add_name(name)
    else:
        from engine.inference.models import EMBEDDED_GGUF, embedded_gguf_folder

        try:  # the lab's own tokenizer family: take llama.cpp's pre-tokenizer name from it
            reader = g.GGUFReader(str(embedded_gguf_folder() / EMBEDDED_GGUF))
            embedded_pre = reader.fields["tokenizer.ggml.pre"].contents()
            embedded_tokens = reader.fields["tokenizer.ggml.tokens"].contents()
            del reader
        except Exception:  # noqa: BLE001 - only a better guess of the pre-tokenizer
            pass
        pre = guess_pre_tokenizer(tokenizer, embedded_tokens, embedded_pre)

        def metadata(writer):
            add_hf_metadata(writer, config, tokenizer, arch, name, pre)

    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"
    files = []
    for quant in quants:
        say(quant)
        fname = f"{stem}-{quant}.gguf"
        size = write_gguf(out / fname, tensors, quant, arch, metadata,
                          description=f"RLHF Lab export of {name}")
        est = estimate(config, quant)
        files.append({"quant": quant, "file": fname, "path": str(out / fname), "bytes": size,
                      "memory_bytes": int(est["memory_bytes"] - est["file_bytes"] + size),
                      "context": est["context"]})
    fmt = chat_format(getattr(tokenizer, "chat_template", None),
                      getattr(tokenizer, "eos_token", None))
    # Q8_0: near F16's answers at half the size (Q4_0 drifts sooner; see tests/test_gguf.py)
    chosen = next((f for f in files if f["quant"] == "q8_0"), files[0])["file"]
    (out / "Modelfile").write_text(modelfile(chosen, fmt), encoding="utf-8")
    (out / "README.md").write_text(readme(name, files, chosen, fmt), encoding="utf-8")
    return {"gguf_dir": str(out), "gguf_files": files, "architecture": arch,
            "metadata_from": "base GGUF" if source_gguf else "config and tokenizer",
            "modelfile": str(out / "Modelfile"), "stops": fmt.stops}
