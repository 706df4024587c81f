"""What the RL tests share (PPO, GRPO, best-of-n, the diagnostics): the hand-set bigram
model (its fixture `bigram_dir` is in tests/conftest.py), prompts, datasets, configs and
finished stand-in runs. Test modules import from here, never from each other."""
from __future__ import annotations

from pathlib import Path

import torch

PROMPTS = [f"Say something about {w}." for w in
           ("cats", "dogs", "rain", "the sun", "tea", "code", "snow", "bread")]

HELDOUT = [f"Tell me about {w}." for w in ("owls", "ice", "maps", "jazz", "clay")]


def build_bigram_model(folder: Path, tokenizer_dir: Path, logit: float = 5.0) -> Path:
    """A 1-layer Llama set by hand: attention and MLP write nothing (o_proj = down_proj = 0),
    so the last hidden state is RMSNorm(embedding of the current token) and the untied LM
    head is a bigram table. LoRA on q/k/v/o can still change it (o_proj's LoRA writes)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {w: tok.encode(w, add_special_tokens=False)[0]
           for w in ("Yes", "No", "Sure", "Fine", ".", "\n")}
    eos, H = tok.eos_token_id, 64
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=H, intermediate_size=2 * H,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        emb, W = model.model.embed_tokens.weight, model.lm_head.weight
        bias_dim, dims = H - 1, {}
        for k, (w, i) in enumerate([*ids.items(), ("<eos>", eos)]):
            emb[i].zero_()
            emb[i, k] = emb[i, bias_dim] = 1.0
            dims[w] = k
        scale = (H / 2) ** 0.5  # RMSNorm(e_k + e_bias) = scale·(e_k + e_bias)
        W.zero_()
        W[:, bias_dim] = -15.0 / scale  # every other token: logit −15
        for i in [*ids.values(), eos]:
            W[i, bias_dim] = 0.0
        for w in ("Yes", "No", "Sure", "Fine"):
            W[ids[w], dims["\n"]] = logit / scale  # end of the header → a word
            W[ids["."], dims[w]] = logit / scale   # a word → "." or EOS
            W[eos, dims[w]] = logit / scale
        W[eos, dims["."]] = logit / scale          # "." → EOS
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prompt_dataset(store, name="prompts"):
    store.create_dataset(name, "preference")
    store.add_rows(name, [{"prompt": p, "chosen": "Yes.", "rejected": "No"} for p in PROMPTS])
    return name


def ppo_config(model_dir, **kw) -> "PPOConfig":
    base = dict(model=str(model_dir), dataset="prompts", max_steps=12, batch_size=8, minibatches=2,
                ppo_epochs=1, max_new_tokens=4, temperature=1.0, learning_rate=3e-3, beta=0.2,
                save_every=0, samples_per_step=4)
    base.update(kw)
    from engine.training.ppo import PPOConfig

    cfg = PPOConfig(**base)
    cfg.lora.r, cfg.lora.alpha = 8, 16
    return cfg


def grpo_config(model_dir, **kw) -> "GRPOConfig":
    base = dict(model=str(model_dir), dataset="prompts", max_steps=8, batch_size=2,
                group_size=4, minibatches=2, max_new_tokens=4, temperature=1.0,
                learning_rate=3e-3, beta=0.04, save_every=0,
                builtin_rewards=["ends_with_period"])   # the bigram model's rule
    base.update(kw)
    from engine.training.grpo import GRPOConfig

    cfg = GRPOConfig(**base)
    cfg.lora.r, cfg.lora.alpha = 8, 16
    return cfg


def fake_sft_run(store, model_dir) -> int:
    """A finished "SFT" run whose adapter is a small random LoRA on the bigram model."""
    from peft import LoraConfig, get_peft_model

    from engine.inference.models import adapter_dir, load_base
    from engine.training.train_utils import save_adapter

    rid = store.create_run("sft", {"model": str(model_dir)}, model=str(model_dir))
    store.finish_run(rid, "succeeded")
    base = load_base(str(model_dir), device="cpu").model
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    save_adapter(model, adapter_dir(rid))
    return rid


def reward_run(store, model_dir, seed: int, spec: str | None = None) -> int:
    """A finished reward-model run on the bigram base: a LoRA adapter and a random head."""
    from engine.inference.models import adapter_dir
    from engine.training import reward as R

    rid = fake_sft_run(store, model_dir)
    store.update_run(rid, stage="reward", config={"model": spec or str(model_dir)})
    R.save_head(adapter_dir(rid) / R.HEAD_FILE, R.new_head(64, seed=seed), None)
    return rid


def split_dataset(store, name="split-prompts"):
    """Training prompts, and an eval split holding new prompts and two training ones."""
    store.create_dataset(name, "preference")
    rows = [{"prompt": p, "chosen": "Yes.", "rejected": "No", "split": "train"}
            for p in PROMPTS]
    rows += [{"prompt": p, "chosen": "Yes.", "rejected": "No", "split": "eval"}
             for p in HELDOUT + PROMPTS[:2]]
    store.add_rows(name, rows)
    return name
