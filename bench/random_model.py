"""A randomly initialised copy of a model, from its config and tokenizer files alone.

    python bench/random_model.py CONFIG_DIR OUT_DIR [--seed N]
    python bench/random_model.py --shape smollm2-1.7b|qwen2.5-1.5b --tokenizer DIR OUT_DIR
        [--layers N]

CONFIG_DIR holds config.json and the tokenizer files (e.g. extracted from the embedded
GGUF with `AutoConfig/AutoTokenizer.from_pretrained(folder, gguf_file=...)` and
`save_pretrained`); OUT_DIR gets the same architecture with random weights
(`AutoModelForCausalLM.from_config`), saved as a Hugging Face folder that `bench/run.py
--model OUT_DIR` takes. For measuring speed, memory and MFU where the weights cannot
travel (a GPU machine without network): those do not depend on the weight values, but a
random model rarely samples EOS, so PPO responses run to max_new_tokens.

--shape takes a hand-written config from bench/shapes/ (larger models' architectures, no
download) and the tokenizer files of --tokenizer (e.g. the embedded SmolLM2 folder);
--layers keeps only the first N layers (a smoke test of the same shape on a CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHAPES = {p.stem: p for p in (Path(__file__).resolve().parent / "shapes").glob("*.json")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config_dir", nargs="?", help="config.json + tokenizer files")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", choices=sorted(SHAPES), help="a hand-written config instead")
    p.add_argument("--tokenizer", help="with --shape: the folder of the tokenizer files")
    p.add_argument("--layers", type=int, default=None, help="keep only this many layers")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="of the saved weights (bfloat16: half the disk, for large shapes)")
    p.add_argument("--device", default="cpu",
                   help="where the random weights are drawn (cuda: seconds for 1.7B)")
    args = p.parse_args(argv)
    if bool(args.shape) == bool(args.config_dir) or (args.shape and not args.tokenizer):
        p.error("give CONFIG_DIR, or --shape with --tokenizer")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(args.out_dir)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        print(json.dumps({"model": str(out), "reused": True}))
        return 0
    if args.shape:
        values = {k: v for k, v in json.loads(SHAPES[args.shape].read_text()).items()
                  if not k.startswith("_")}
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        config = AutoConfig.from_pretrained(args.config_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.config_dir)
    if args.layers:
        config.num_hidden_layers = args.layers
        if getattr(config, "max_window_layers", None):
            config.max_window_layers = min(config.max_window_layers, args.layers)
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:args.layers]
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"model": str(out), "parameters": n, "model_type": config.model_type,
                      "layers": config.num_hidden_layers, "hidden": config.hidden_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
