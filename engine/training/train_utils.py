"""Training helpers shared by every training stage (SFT, reward model, PPO).

Small on purpose; each function does one thing:

- `make_accelerator()`                    the one Accelerator set-up every stage uses
- `seed_everything(seed)`                 python, numpy and torch RNGs
- `make_optimizer(model, lr, ...)`        AdamW over the trainable parameters only
- `make_scheduler(opt, schedule, warmup_steps, total_steps)`  constant | linear | cosine, with warm-up
- `grad_norm(parameters)`                 global L2 norm of the gradients (no clipping)
- `TokenTimer`                            tokens/s of the training steps
- `save_adapter(model, folder)`           a PEFT adapter flattened into `folder`
                                          (adapter_config.json + adapter_model.safetensors)
- `save_checkpoint(...)` / `load_checkpoint(...)` / `latest_checkpoint(run_dir)`
                                          adapter + optimizer + scheduler + RNG + step
- `stream_indices(n, seed, start, count, lengths, batch)`
                                          a deterministic, endless, epoch-shuffled data order,
                                          optionally grouped by length (`epoch_order`)

Checkpoints live in `<run_dir>/checkpoints/step-<N>/`:
    adapter/ (PEFT format)   optimizer.*   scheduler.*   rng.*   <module>.*   state.json
where each `name.*` is `name.json` (the structure, numbers, Python's and numpy's RNG
states) plus `name.safetensors` (the tensors): loading a checkpoint never unpickles, so a
planted file cannot run code. Checkpoints of the old format (pickled `.pt` files) are
refused with a CheckpointError, never loaded: the resume fails and says so.
`state.json` holds {"step": N, **extra}; a checkpoint folder is written under a temporary
name and renamed, so a crash never leaves a half-written "step-N".
Only the main process writes; every process loads.
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import torch

from engine.errors import CheckpointError

CHECKPOINTS = "checkpoints"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


# -- set-up ----------------------------------------------------------------------------
def make_accelerator():
    """The Accelerator every stage uses (same arguments everywhere: its state is a
    process-wide singleton). CPU unless a GPU is available; under `accelerate launch` the
    launcher's environment decides the processes."""
    from accelerate import Accelerator

    from engine.inference.models import pick_device

    return Accelerator(cpu=pick_device().type == "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    from accelerate.utils import set_seed

    set_seed(int(seed))


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model, lr: float, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
    """AdamW over the trainable parameters (the LoRA weights, heads) only."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters (no adapter attached?)")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based):
    warm-up  f = (step+1) / warmup_steps                         for step < warmup_steps
    linear   f = (T − step) / (T − W)                             afterwards
    cosine   f = ½·(1 + cos(π·(step − W) / (T − W)))             afterwards
    constant f = 1
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule {schedule!r}: expected 'constant', 'linear' or 'cosine'")


def make_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """A LambdaLR following `lr_factor`. Step it once per optimizer step, yourself:
    do not pass it to accelerator.prepare (that would step it once per process)."""
    lr_factor(0, warmup_steps, total_steps, schedule)  # validates the name now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, schedule))


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return int(round(max(0.0, warmup_ratio) * total_steps))


# -- measuring -------------------------------------------------------------------------
@torch.no_grad()
def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """Global gradient norm ‖g‖₂ = sqrt(Σ_p ‖g_p‖₂²) over parameters with a gradient."""
    norms = [p.grad.detach().float().norm(2) for p in parameters if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms), 2))


def optimizer_step(accelerator, parameters, optimizer, scheduler, max_grad_norm: float | None):
    """One update: clip ‖g‖₂ to max_grad_norm (when > 0), step optimizer and schedule.

    Returns (gradient norm before clipping, learning rate used for this step).
    """
    parameters = list(parameters)
    if max_grad_norm and max_grad_norm > 0:
        norm = float(accelerator.clip_grad_norm_(parameters, max_grad_norm))
    else:
        norm = grad_norm(parameters)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, lr


class TokenTimer:
    """Counts tokens over timed sections: `timer.start()` … `timer.stop(n_tokens)`.

    `rate` is the tokens/s of the last section, `average` over all sections so far
    (time outside sections, e.g. evaluation, is not counted). `tokens`/`seconds` can be
    restored from a checkpoint to keep the average across a resume.
    """

    def __init__(self, tokens: int = 0, seconds: float = 0.0):
        self.tokens, self.seconds = int(tokens), float(seconds)
        self.last_tokens, self.last_seconds = 0, 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self, tokens: int) -> float:
        """End the section started by start(); returns its tokens/s."""
        self.last_seconds = time.perf_counter() - self._t0
        self.last_tokens = int(tokens)
        self.tokens += self.last_tokens
        self.seconds += self.last_seconds
        return self.rate

    @property
    def rate(self) -> float:
        return self.last_tokens / self.last_seconds if self.last_seconds > 0 else 0.0

    @property
    def average(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# -- data order --------------------------------------------------------------------------
GROUP_BATCHES = 50  # length grouping sorts windows of this many batches (as transformers does)


def epoch_order(n: int, seed: int, epoch: int, lengths: list[int] | None = None,
                batch: int = 1, group_batches: int = GROUP_BATCHES) -> list[int]:
    """The examples of one epoch, in training order: a permutation drawn from (seed, epoch).

    With `lengths`, the order is *grouped by length* so that each batch holds examples of
    similar length and pads little: cut the permutation into windows of `group_batches`
    batches, sort each window by length (longest first), cut it into batches, and shuffle
    the full batches (a short last batch stays last). The epoch is then filled up to a
    multiple of `batch` with its own first examples, so that every batch of every epoch
    starts at a multiple of `batch` in the stream and no batch straddles two epochs."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    perm = torch.randperm(n, generator=g).tolist()
    if lengths is None or batch <= 1:
        return perm
    window = batch * max(1, group_batches)
    full, short = [], []
    for start in range(0, n, window):
        chunk = sorted(perm[start:start + window], key=lambda i: -lengths[i])  # stable
        for k in range(0, len(chunk), batch):
            (full if len(chunk) - k >= batch else short).append(chunk[k:k + batch])
    order = [i for b in torch.randperm(len(full), generator=g).tolist() for i in full[b]]
    order += [i for b in short for i in b]
    fill = (-n) % batch
    return order + perm[:fill]


@functools.lru_cache(maxsize=4)
def _epoch_order_cached(n: int, seed: int, epoch: int, lengths: tuple | None, batch: int
                        ) -> tuple[int, ...]:
    return tuple(epoch_order(n, seed, epoch, list(lengths) if lengths else None, batch))


def stream_indices(n: int, seed: int, start: int, count: int,
                   lengths: list[int] | None = None, batch: int = 1) -> list[int]:
    """Positions start .. start+count−1 of an endless stream of epochs over n examples,
    each epoch `epoch_order(n, seed, epoch, lengths, batch)`. The same (seed, position)
    always gives the same example, so a resumed run or another process picks up the exact
    order without any data-loader state. An epoch has n positions (grouped by length:
    n rounded up to a multiple of `batch`)."""
    if n <= 0:
        raise ValueError("no examples to train on")
    if lengths is not None and len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} examples")
    grouped = lengths is not None and batch > 1
    size = n + ((-n) % batch if grouped else 0)
    key = tuple(lengths) if grouped else None
    out: list[int] = []
    for pos in range(start, start + count):  # each epoch's order is computed once (cached)
        out.append(_epoch_order_cached(n, int(seed), pos // size, key, batch)[pos % size])
    return out


# -- adapters ----------------------------------------------------------------------------
def save_adapter(model, folder: str | os.PathLike, adapter_name: str | None = None) -> Path:
    """Save one PEFT adapter in standard layout directly in `folder`
    (adapter_config.json + adapter_model.safetensors), whatever its name.

    peft writes adapters not named "default" into `folder/<name>/`; we save into a
    temporary folder and move the files up. `model` may be wrapped (DDP): it is unwrapped.
    """
    model = _unwrap(model)
    adapter_name = adapter_name or getattr(model, "active_adapter", None) or "default"
    if isinstance(adapter_name, (list, tuple)):
        adapter_name = adapter_name[0]
    folder = Path(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), selected_adapters=[adapter_name], safe_serialization=True)
    found = [p.parent for p in tmp.rglob("adapter_config.json")]
    if len(found) != 1:
        raise RuntimeError(f"expected one saved adapter under {tmp}, found {len(found)}")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in found[0].iterdir():
        if f.is_file():
            shutil.move(str(f), folder / f.name)
    shutil.rmtree(tmp)
    return folder


def load_adapter_weights(model, folder: str | os.PathLike, adapter_name: str | None = None) -> None:
    """Load saved adapter weights (PEFT layout) into an existing, identically configured
    adapter of `model`, in place (used to resume training)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = _unwrap(model)
    adapter_name = adapter_name or getattr(model, "active_adapter", None) or "default"
    state = load_file(str(Path(folder) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise RuntimeError(f"checkpoint adapter does not match the model: {unexpected[:3]}")


def _unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") \
        else model


# -- RNG -----------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- state files without pickle --------------------------------------------------------------
# JSON cannot hold tensors, tuples, numpy arrays or non-string keys: they are tagged.
_TENSOR, _TUPLE, _ITEMS, _NDARRAY = "__tensor__", "__tuple__", "__items__", "__ndarray__"


def save_state(obj, stem: str | os.PathLike) -> None:
    """Write `obj` (nested dicts, lists and tuples of tensors, numpy arrays, numbers,
    strings, None) as `<stem>.json` plus, when it holds tensors, `<stem>.safetensors`."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}

    def enc(x):
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x.detach().to("cpu").contiguous().clone()  # no shared storage
            return {_TENSOR: key}
        if isinstance(x, (list, tuple)):
            items = [enc(v) for v in x]
            return {_TUPLE: items} if isinstance(x, tuple) else items
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not {_TENSOR, _TUPLE, _ITEMS,
                                                           _NDARRAY} & set(x):
                return {k: enc(v) for k, v in x.items()}
            return {_ITEMS: [[enc(k), enc(v)] for k, v in x.items()]}
        if type(x).__module__ == "numpy":
            if hasattr(x, "tolist") and getattr(x, "ndim", 0):
                return {_NDARRAY: x.tolist(), "dtype": str(x.dtype)}
            return x.item() if hasattr(x, "item") else x
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"{stem}: cannot store a {type(x).__name__} in a checkpoint")

    data = enc(obj)
    stem = Path(stem)
    (stem.parent / f"{stem.name}.json").write_text(json.dumps(data))
    if tensors:
        save_file(tensors, str(stem.parent / f"{stem.name}.safetensors"))


def load_state(stem: str | os.PathLike):
    """Read what save_state wrote. A file that is not what it should be (e.g. a pickle
    planted under the name) raises CheckpointError; nothing in it is ever executed."""
    from safetensors.torch import load_file

    stem = Path(stem)
    json_path = stem.parent / f"{stem.name}.json"
    st_path = stem.parent / f"{stem.name}.safetensors"
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        tensors = load_file(str(st_path), device="cpu") if st_path.exists() else {}
    except Exception as exc:  # noqa: BLE001 - JSON, UTF-8, I/O or safetensors header errors
        raise CheckpointError(f"{json_path.parent.name}/{stem.name}: not a valid checkpoint "
                              f"file ({type(exc).__name__}: {exc})") from None

    def dec(x):
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if _TENSOR in x:
                if x[_TENSOR] not in tensors:
                    raise CheckpointError(f"{st_path}: tensor {x[_TENSOR]!r} is missing")
                return tensors[x[_TENSOR]]
            if _TUPLE in x:
                return tuple(dec(v) for v in x[_TUPLE])
            if _ITEMS in x:
                return {_hashable(dec(k)): dec(v) for k, v in x[_ITEMS]}
            if _NDARRAY in x:
                import numpy as np

                return np.asarray(x[_NDARRAY], dtype=np.dtype(x["dtype"]))
            return {k: dec(v) for k, v in x.items()}
        return x

    return dec(data)


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def has_state(folder: str | os.PathLike, name: str) -> bool:
    """Whether a checkpoint folder holds the state file `name` (e.g. a value head)."""
    return (Path(folder) / f"{name}.json").exists()


def refuse_legacy(folder: str | os.PathLike) -> None:
    """Old checkpoints pickled their state in `.pt` files; unpickling runs code, so they
    are refused with a message that says what to do."""
    folder = Path(folder)
    old = sorted(p.name for p in folder.glob("*.pt"))
    if old:
        raise CheckpointError(
            f"checkpoint {folder} predates the safe checkpoint format: its {', '.join(old)} "
            f"are Python pickles, which can run code when loaded, so it is not loaded. "
            f"Delete {folder.parent} to resume this run from step 0, or start a new run.")


# -- checkpoints ---------------------------------------------------------------------------
def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = checkpoints_dir(run_dir)
    out = []
    if root.exists():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() \
                    and (p / "state.json").exists():
                out.append((int(p.name[5:]), p))
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer, scheduler=None,
                    extra: dict | None = None, keep: int = 0, accelerator=None,
                    rng: dict | None = None, modules: dict | None = None) -> Path | None:
    """Write `<run_dir>/checkpoints/step-<step>/` (main process only; others wait).

    `extra`: JSON-able values the stage needs back on resume (e.g. the loss before
    training). `keep` > 0 deletes all but the newest `keep` checkpoints. `rng`: the RNG
    state to store (default: the current one; pass a snapshot taken at the end of `step`
    when saving later, e.g. on cancel mid-step). `modules`: {name: nn.Module} saved as
    `<name>.json/.safetensors` inside the same folder (a reward head, a value head), so they are part of
    the checkpoint's single rename.
    Returns the folder (None on non-main processes).
    """
    main = accelerator is None or accelerator.is_main_process
    if accelerator is not None:
        accelerator.wait_for_everyone()
    folder = checkpoints_dir(run_dir) / f"step-{int(step)}"
    if main:
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_adapter(model, tmp / "adapter")
        save_state(_unwrap_optimizer(optimizer).state_dict(), tmp / "optimizer")
        if scheduler is not None:
            save_state(scheduler.state_dict(), tmp / "scheduler")
        save_state(rng if rng is not None else rng_state(), tmp / "rng")
        for name, module in (modules or {}).items():
            save_state(_unwrap(module).state_dict(), tmp / name)
        (tmp / "state.json").write_text(json.dumps({"step": int(step), **(extra or {})}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        if keep > 0:
            for _, old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return folder if main else None


def load_checkpoint(folder: str | os.PathLike, model, optimizer=None, scheduler=None,
                    restore_rng: bool = True, modules: dict | None = None) -> dict:
    """Restore adapter weights, optimizer, scheduler, RNG and `modules` (those saved with
    it) from a checkpoint folder in place; returns state.json ({"step": N, **extra}).
    Nothing is unpickled: an old-format or tampered checkpoint raises CheckpointError
    before anything is changed."""
    folder = Path(folder)
    refuse_legacy(folder)
    # read every file first: a bad one fails the load before the model is touched
    states = {name: load_state(folder / name) for name in (modules or {})}
    if optimizer is not None:
        states["optimizer"] = load_state(folder / "optimizer")
    if scheduler is not None and has_state(folder, "scheduler"):
        states["scheduler"] = load_state(folder / "scheduler")
    if restore_rng and has_state(folder, "rng"):
        states["rng"] = load_state(folder / "rng")
    for name, module in (modules or {}).items():
        _unwrap(module).load_state_dict(states[name])
    load_adapter_weights(model, folder / "adapter")
    if optimizer is not None:
        _unwrap_optimizer(optimizer).load_state_dict(states["optimizer"])
    if "scheduler" in states:
        scheduler.load_state_dict(states["scheduler"])
    if "rng" in states:
        set_rng_state(states["rng"])
    return json.loads((folder / "state.json").read_text())


def resume_state(ctx, model, optimizer, scheduler, total: int) -> tuple[int, dict]:
    """(step to continue after, the checkpoint's state.json) for a run that fits a fixed
    dataset: on a resume, the latest checkpoint is loaded into the model, optimizer and
    scheduler (0, {} without one). The main process then forgets the metrics and samples of
    the steps after it: they are redone (all of them when starting from 0)."""
    start, state = 0, {}
    if ctx.resume:
        ckpt = latest_checkpoint(ctx.run_dir)
        if ckpt is None:
            ctx.log("no checkpoint found: starting from step 0")
        else:
            state = load_checkpoint(ckpt, model, optimizer, scheduler)
            start = int(state["step"])
            ctx.log(f"resumed from checkpoint {ckpt.name} (step {start} of {total})")
        ctx.progress(start, total, f"resumed at step {start}")
    if ctx.is_main_process:
        ctx.store.delete_after_step(ctx.run_id, start if start > 0 else -1)
    return start, state


def save_final_adapter(ctx, accelerator, model, total: int,
                       adapter_name: str | None = None) -> Path:
    """The run's final adapter at adapter_dir(run_id) (standard PEFT), recorded as its
    "adapter" artifact; the main process writes, every process waits for it."""
    from engine.inference.models import adapter_dir

    accelerator.wait_for_everyone()
    out = adapter_dir(ctx.run_id)
    if ctx.is_main_process:
        ctx.progress(total, total, "saving the adapter")
        save_adapter(model, out, adapter_name)
        ctx.artifact("adapter", out)
        ctx.log(f"adapter saved to {out}")
    accelerator.wait_for_everyone()
    return out


def _unwrap_optimizer(optimizer):
    # accelerate's AcceleratedOptimizer keeps the real one in .optimizer
    return getattr(optimizer, "optimizer", optimizer)


# -- a trainable policy and its frozen reference on one base --------------------------------
POLICY, REF = "policy", "ref"


def sft_adapter_path(store, sft_run: int, model_spec: str) -> Path:
    """The saved adapter of a finished SFT run of `model_spec` (checked before any model
    loads: a ValueError says which run and why it cannot be the starting point)."""
    from engine.inference.models import adapter_dir

    run = store.get_run(int(sft_run))
    spec = (run.get("config") or {}).get("model") or run.get("model") or "embedded"
    if run["stage"] != "sft" or spec != model_spec:
        raise ValueError(f"run {run['id']} is not an SFT run of model {model_spec!r} "
                         f"(it is a {run['stage']} run of {spec!r})")
    path = adapter_dir(run["id"])
    if not (path / "adapter_config.json").exists():
        raise ValueError(f"SFT run {run['id']} has no saved adapter (status {run['status']}); "
                         f"pick a finished SFT run")
    return path


def policy_and_reference(base, lora, sft_path: Path | None = None):
    """One base model, two roles (never a second copy of the weights):
    π_θ = the trainable adapter "policy" (a copy of the SFT adapter when `sft_path` is given,
    else a fresh LoRA); π_ref = the same SFT adapter loaded again, frozen, as "ref", or the
    base with adapters disabled. Returns (peft model with "policy" active, has_ref)."""
    from engine.inference.models import add_lora, load_adapter

    if sft_path is not None:
        model = load_adapter(base, sft_path, adapter_name=REF, is_trainable=False)
        model.load_adapter(str(sft_path), adapter_name=POLICY, is_trainable=True)
    else:
        model = add_lora(base, lora, adapter_name=POLICY)
    model.set_adapter(POLICY)
    return model, sft_path is not None


def policy_parameters(model) -> list[torch.nn.Parameter]:
    """The trainable weights of the "policy" adapter only (never the reference's)."""
    marker = f".{POLICY}."
    return [p for n, p in _unwrap(model).named_parameters() if p.requires_grad and marker in n]


@contextmanager
def reference_mode(model, has_ref: bool):
    """Within the block the model computes π_ref: the frozen "ref" adapter, or the base with
    adapters disabled; "policy" is active again afterwards."""
    model = _unwrap(model)
    if has_ref:
        model.set_adapter(REF, inference_mode=True)
        try:
            yield
        finally:
            model.set_adapter(POLICY)
    else:
        with model.disable_adapter():
            yield


def load_training_base(stage: str, cfg, store, device, log=None):
    """The base model of a training run, after its memory check (engine.memory): a run whose
    estimate exceeds the device's free memory is refused here, before anything loads
    (MemoryEstimateError naming what to change); `gradient_checkpointing="auto"` is on when
    the estimate says the run would not fit without it. The base comes quantised when
    `quantization` asks for it, prepared for k-bit training, checkpointed when on.
    Returns (LoadedModel, Estimate)."""
    from engine import memory
    from engine.inference.models import load_base, prepare_for_training

    est = memory.check_fits(stage, cfg, store, device, log=log)
    quantization = getattr(cfg, "quantization", "none")
    loaded = load_base(cfg.model, device, quantization=quantization)
    loaded.model = prepare_for_training(loaded.model, quantization, est.checkpointing)
    return loaded, est
