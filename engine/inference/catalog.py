"""The causal language models on this machine: the Hugging Face cache and folders the user
added, each with its parameter count, architecture, size on disk and whether it has a
chat template (the sidebar's model list).

    find_models()            every model found, as dicts (spec, name, source, ...)
    describe_model(folder)   one folder's description, or None when it is no causal LM
    user_folders() / add_user_folder(path) / remove_user_folder(path)
                             the folders the user asked to scan (<data folder>/model_folders.json)

Nothing is loaded: the parameter count comes from the safetensors headers (exact for the
stored weights), or from the config on the meta device when there are none.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from storage import data_home

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# -- where to look ----------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path("~/.cache/huggingface").expanduser()
    return Path(home).expanduser() / "hub"


def _folders_file() -> Path:
    return data_home() / "model_folders.json"


def user_folders() -> list[str]:
    try:
        return [str(p) for p in json.loads(_folders_file().read_text())]
    except (OSError, ValueError):
        return []


def add_user_folder(path: str) -> str:
    """Remember a folder to scan (a model folder, or a folder of model folders); raises
    ValueError naming it when it does not exist."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{path!r} is not a folder")
    folders = user_folders()
    if str(folder) not in folders:
        folders.append(str(folder))
        _folders_file().parent.mkdir(parents=True, exist_ok=True)
        _folders_file().write_text(json.dumps(folders, indent=1))
    return str(folder)


def remove_user_folder(path: str) -> None:
    folders = [f for f in user_folders() if f != path]
    _folders_file().write_text(json.dumps(folders, indent=1))


# -- describing one folder --------------------------------------------------------------
def safetensors_parameters(files: list[Path]) -> int:
    """Σ of the tensors' element counts, read from each file's JSON header only."""
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for d in meta["shape"]:
                count *= d
            total += count
    return total


def _is_causal_lm(config: dict) -> bool:
    archs = config.get("architectures") or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(cfg.get("chat_template"))


def describe_model(folder: str | os.PathLike, name: str | None = None,
                   source: str = "folder") -> dict | None:
    """{spec, name, source, architecture, model_type, parameters, size_bytes, chat_template}
    of a Hugging Face model folder, or None when it holds no causal language model."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or not _is_causal_lm(config):
        return None
    weights = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    size = sum(p.stat().st_size for p in weights)  # stat follows the HF cache's links to blobs
    safetensors = [p for p in weights if p.name.endswith(".safetensors")]
    try:
        params = safetensors_parameters(safetensors) if safetensors else None
    except (OSError, ValueError, KeyError, struct.error):
        params = None
    if params is None:
        try:
            from engine.memory import model_shape

            params = model_shape(str(folder)).parameters
        except Exception:  # noqa: BLE001 - a config transformers cannot build: unknown
            params = None
    archs = config.get("architectures") or []
    return {"spec": str(folder), "name": name or folder.name, "source": source,
            "architecture": archs[0] if archs else config.get("model_type"),
            "model_type": config.get("model_type"), "parameters": params,
            "size_bytes": size, "chat_template": has_chat_template(folder)}


# -- finding -----------------------------------------------------------------------------
def _cache_models(cache: Path) -> list[dict]:
    out = []
    if not cache.is_dir():
        return out
    for repo in sorted(cache.glob("models--*")):
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime,
                           reverse=True)
        name = repo.name[len("models--"):].replace("--", "/")
        for snap in snapshots:  # the newest snapshot that holds a config
            info = describe_model(snap, name=name, source="hf-cache")
            if info is not None:
                out.append(info)
                break
    return out


def _folder_models(folder: Path) -> list[dict]:
    if (folder / "config.json").exists():
        info = describe_model(folder)
        return [info] if info else []
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        info = describe_model(sub)
        if info:
            out.append(info)
    return out


def find_models(folders: list[str] | None = None) -> list[dict]:
    """Every causal LM in the Hugging Face cache and in `folders` (default: the user's
    folders), each once."""
    found = _cache_models(hf_cache_dir())
    for folder in user_folders() if folders is None else folders:
        found += _folder_models(Path(folder).expanduser())
    seen, out = set(), []
    for info in found:
        if info["spec"] not in seen:
            seen.add(info["spec"])
            out.append(info)
    return out


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def human_count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n < 10 * size else f"{n / size:.0f}{unit}"
    return str(n)
