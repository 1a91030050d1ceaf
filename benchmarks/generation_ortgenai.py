"""onnxruntime-genai (an alternative generation engine, not wired into bench/lm/engines.py) against transformers'
batched generate, side by side in one process on the same prompts; SmolLM2 exported by onnxruntime-genai's model
builder in int4 and fp32. It runs in its own virtual environment, because the builder pulls onnx and friends:

    python -m venv /tmp/ortvenv && /tmp/ortvenv/bin/pip install onnxruntime-genai==0.18.0 torch==2.13.0 \
        transformers==5.24.0 onnx onnx_ir onnxscript                               # ~2 min here
    /tmp/ortvenv/bin/python -m onnxruntime_genai.models.builder -i HF_DIR -o /tmp/ort_int4 -p int4 -e cpu
    /tmp/ortvenv/bin/python -m onnxruntime_genai.models.builder -i HF_DIR -o /tmp/ort_fp32 -p fp32 -e cpu
    OMP_NUM_THREADS=1 /tmp/ortvenv/bin/python benchmarks/generation_ortgenai.py HF_DIR PROMPTS.json /tmp/ort_int4 \
        /tmp/ort_fp32 benchmarks/results/generation_ortgenai.json

HF_DIR is the SmolLM2 directory bench.lm.policies.resolve_model_dir converts; PROMPTS.json a list of prompt texts
(the run recorded here used the first 32 of benchmarks/generation.py's 64). onnxruntime-genai's tokenizer pads a
batch on the right; its sampling was timed, not checked against the reference's distribution.
"""

import json
import os
import statistics
import sys
import time

import onnxruntime_genai as og
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SAMPLES, TOKENS, BATCH, REPEATS = 2, 20, 16, 2
REFERENCE = "transformers batched (16)"


def main() -> None:
    torch.set_num_threads(1)
    hf_dir, prompts_file, int4_dir, fp32_dir, out_file = sys.argv[1:6]
    prompts = json.loads(open(prompts_file).read())
    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    rows = [p for p in prompts for _ in range(SAMPLES)]

    def transformers_batched(seed):
        torch.manual_seed(seed)
        out = []
        for i in range(0, len(rows), BATCH):
            enc = tok(rows[i : i + BATCH], return_tensors="pt", padding=True)
            with torch.no_grad():
                ids = model.generate(**enc, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                     max_new_tokens=TOKENS, pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return out

    def ort_runner(path):
        ort_model = og.Model(path)
        ort_tok = og.Tokenizer(ort_model)

        def run(seed):
            out = []
            for i in range(0, len(rows), BATCH):
                batch = rows[i : i + BATCH]
                ids = ort_tok.encode_batch(batch)
                width = int(ids.shape()[1])
                params = og.GeneratorParams(ort_model)
                params.set_search_options(do_sample=True, top_k=49152, top_p=1.0, temperature=1.0,
                                          batch_size=len(batch), max_length=width + TOKENS, random_seed=seed)
                generator = og.Generator(ort_model, params)
                generator.append_tokens(ids)
                while not generator.is_done():
                    generator.generate_next_token()
                out += [ort_tok.decode(generator.get_sequence(j)[width:]) for j in range(len(batch))]
            return out

        return run

    runs = {REFERENCE: transformers_batched, "onnxruntime-genai int4 (16)": ort_runner(int4_dir),
            "onnxruntime-genai fp32 (16)": ort_runner(fp32_dir)}
    names = list(runs)
    rates = {name: [] for name in names}
    for repeat in range(REPEATS):
        for name in names[repeat % 3 :] + names[: repeat % 3]:
            clock = time.perf_counter()
            texts = runs[name](repeat)
            elapsed = time.perf_counter() - clock
            n_tokens = sum(len(x) for x in tok(texts, add_special_tokens=False)["input_ids"])
            rates[name].append(n_tokens / elapsed)
            print(repeat, name, round(elapsed, 1), round(n_tokens / elapsed, 1), repr(texts[0][:60]), flush=True)
    result = {}
    for name in names:
        ratio = [a / b for a, b in zip(rates[name], rates[REFERENCE])]
        result[name] = {"tokens_per_second": [round(x, 1) for x in rates[name]],
                        "median": round(statistics.median(rates[name]), 1),
                        "speedup_vs_transformers_batched": {"median": round(statistics.median(ratio), 2),
                                                            "min": round(min(ratio), 2), "max": round(max(ratio), 2)}}
    result["workload"] = {"prompts": len(prompts), "samples": SAMPLES, "max_new_tokens": TOKENS, "batch": BATCH,
                          "repeats": REPEATS, "onnxruntime_genai": "0.18.0",
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    print(json.dumps(result, indent=1))
    with open(out_file, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
