"""`bench env`: what a bug report needs to know about this machine — versions, devices, the generation engines
that could be used, and where the artifact cache is and how much it holds."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

from bench import provenance
from bench.lm.bf16 import fast_bf16_hardware
from bench.lm.engines import resolve
from bench.storage.artifacts import cache_for
from bench.storage.cache_admin import human_bytes, usage

# transformers generates everywhere; the others are optional faster engines, reported without importing them
OPTIONAL_ENGINES = ("ctranslate2", "vllm", "onnxruntime_genai")


def devices() -> dict:
    import torch  # heavy: only `bench env` asks for devices

    cuda = torch.cuda.is_available()
    return {
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    }


def generation_engines() -> dict[str, bool]:
    """Whether each engine is installed (found by `importlib.util.find_spec`, never imported)."""
    found = {"transformers": importlib.util.find_spec("transformers") is not None}
    for name in OPTIONAL_ENGINES:
        found[name] = importlib.util.find_spec(name) is not None
    return found


def engine_choice() -> dict:
    """What `gen_engine=auto` becomes here, and whether the CPU multiplies bfloat16 natively (transformers-bf16 is
    fast only there): the two facts that explain a sampling speed in a bug report."""
    return {"auto": resolve("auto"), "native_bf16_cpu": fast_bf16_hardware()}


def report(runs_dir: Path) -> dict:
    cache = cache_for(runs_dir)
    source = "IRL_BENCH_CACHE" if os.environ.get("IRL_BENCH_CACHE") else f"--runs-dir {runs_dir}"
    return {
        "versions": provenance.versions(),
        "git_commit": provenance.git_commit(),
        "devices": devices(),
        "generation_engines": generation_engines(),
        "engine_choice": engine_choice(),
        "cache": {**usage(cache), "source": source},
    }


def render(env: dict) -> list[str]:
    dev, cache = env["devices"], env["cache"]
    gpus = ", ".join(dev["gpus"]) if dev["gpus"] else "none"
    lines = ["versions:"]
    lines += [f"  {name:18s} {value}" for name, value in env["versions"].items()]
    lines += [
        f"  {'git commit':18s} {env['git_commit']}",
        "devices:",
        f"  {'machine':18s} {dev['machine']}",
        f"  {'CPUs':18s} {dev['cpus']}",
        f"  {'CUDA':18s} {'available' if dev['cuda_available'] else 'not available'}"
        + (f" (CUDA {dev['cuda_version']})" if dev["cuda_version"] else ""),
        f"  {'GPUs':18s} {dev['gpu_count']}: {gpus}",
        "generation engines:",
    ]
    engines = env["generation_engines"]
    lines += [f"  {name:18s} {'installed' if ok else 'not installed'}" for name, ok in engines.items()]
    choice = env["engine_choice"]
    lines += [f"  {'native bf16 CPU':18s} {'yes' if choice['native_bf16_cpu'] else 'no'}",
              f"  {'auto':18s} {choice['auto']}"]
    lines += [
        "artifact cache:",
        f"  {'location':18s} {cache['root']} (from {cache['source']})",
        f"  {'size':18s} " + (f"{cache['artifacts']} artifacts, {cache['files']} files, {human_bytes(cache['bytes'])}"
                              f" ({cache['bytes']} bytes)" if cache["exists"] else "empty (not created yet)"),
    ]
    return lines
