"""A randomly initialised copy of a model, from its config and tokenizer files alone.

    python bench/random_model.py CONFIG_DIR OUT_DIR [--seed N]

CONFIG_DIR holds config.json and the tokenizer files (e.g. extracted from the embedded
GGUF with `AutoConfig/AutoTokenizer.from_pretrained(folder, gguf_file=...)` and
`save_pretrained`); OUT_DIR gets the same architecture with random weights
(`AutoModelForCausalLM.from_config`), saved as a Hugging Face folder that `bench/run.py
--model OUT_DIR` takes. For measuring speed, memory and MFU where the weights cannot
travel (a GPU machine without network): those do not depend on the weight values, but a
random model rarely samples EOS, so PPO responses run to max_new_tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config_dir")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(args.out_dir)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        print(json.dumps({"model": str(out), "reused": True}))
        return 0
    config = AutoConfig.from_pretrained(args.config_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.config_dir)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"model": str(out), "parameters": n, "model_type": config.model_type,
                      "layers": config.num_hidden_layers, "hidden": config.hidden_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
