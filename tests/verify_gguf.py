"""llama.cpp itself reads the lab's GGUF export: `make verify-gguf` (not part of `make test`;
pytest does not collect this file).

In the app's environment: a fresh data folder, the tiny 2-layer Llama (or, with
--embedded, SmolLM2-135M) with a perturbed LoRA adapter as a finished run, the app's
greedy answer to a fixed prompt, and the run exported as F16 and Q8_0. Then, in the
llama-cpp-python environment (`--llama-python`, built by the Makefile in .venv-llama), each
file is loaded by llama.cpp, which tokenises the prompt the app wrote through the chat
template and answers greedily. Prints one JSON document; exit 1 when F16 does not give the
app's tokens, or llama.cpp does not tokenise the prompt as the app does.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "Name three colours."
NEW_TOKENS = 12

LLAMA_SIDE = r"""
import json, sys
import llama_cpp
from llama_cpp import Llama

path, text, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
app_prompt = json.loads(sys.argv[4])
llm = Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False, logits_all=False)
ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
out = []
for tok in llm.generate(app_prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
    if tok == llm.token_eos() or len(out) >= n:
        break
    out.append(tok)
print(json.dumps({"prompt": ids, "answer": out, "version": llama_cpp.__version__}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--llama-python", default=str(ROOT / ".venv-llama" / "bin" / "python"))
    ap.add_argument("--embedded", action="store_true", help="SmolLM2-135M instead of the tiny model")
    ap.add_argument("--keep", action="store_true",
                    help="keep the data folder (exports, 0.5-1 GB) and print where it is")
    args = ap.parse_args(argv)
    if not Path(args.llama_python).exists():
        print(f"no llama-cpp-python environment at {args.llama_python}: `make verify-gguf` "
              f"builds it (.venv-llama)", file=sys.stderr)
        return 2

    home = Path(tempfile.mkdtemp(prefix="verify-gguf-"))
    os.environ.update(RLHF_LAB_HOME=str(home), RLHF_LAB_DEVICE="cpu")
    try:
        return check(args, home)
    finally:
        if args.keep:
            print(f"data folder kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def check(args, home: Path) -> int:
    import torch

    from engine.export import export_run
    from engine.inference.chat import encode_prompt
    from engine.inference.models import build_tiny_model, ensure_embedded_cache, inference_cache
    from storage import Store
    from tests.conftest import make_adapter_run

    store = Store(home / "lab.db")
    embedded = ensure_embedded_cache()
    if args.embedded:
        rid = make_adapter_run(store, embedded, stage="ppo", spec="embedded")
    else:
        rid = make_adapter_run(store, build_tiny_model(home / "tiny", embedded))
    with inference_cache.use(store, rid) as (model, tok):
        ids = encode_prompt(tok, PROMPT)
        text = tok.decode(ids)
        x = torch.tensor([ids])
        gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=NEW_TOKENS, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        answer = [t for t in gen[0, x.shape[1]:].tolist() if t != tok.pad_token_id]
        eos = tok.eos_token_id
    inference_cache.clear()
    answer = answer[:answer.index(eos)] if eos in answer else answer
    summary = export_run(store, rid, "verify", gguf=["f16", "q8_0"])
    result = {"model": "embedded" if args.embedded else "tiny", "app_answer": answer,
              "files": {}}
    ok = True
    for f in summary["gguf_files"]:
        proc = subprocess.run([args.llama_python, "-c", LLAMA_SIDE, f["path"], text,
                               str(NEW_TOKENS), json.dumps(ids)], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 2
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        result["llama_cpp_python"] = got["version"]
        same = 0
        for a, b in zip(got["answer"], answer):
            if a != b:
                break
            same += 1
        result["files"][f["quant"]] = {"bytes": f["bytes"], "answer": got["answer"],
                                       "same_first_tokens": same,
                                       "prompt_tokenised_alike": got["prompt"] == ids}
        ok &= got["prompt"] == ids and (f["quant"] != "f16" or got["answer"] == answer)
    result["ok"] = bool(ok)
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
