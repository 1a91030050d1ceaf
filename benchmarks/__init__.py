"""irl-bench's benchmarks: `python -m benchmarks [--only a,b] [--quick] [--list]` (benchmarks/__main__.py) runs the
parts, each a module here writing benchmarks/results/<part>.{md,json}, and indexes them in
benchmarks/results/README.md.

Every figure is measured side by side in one run: the configurations compared run interleaved, in an order
rotated per repeat, at least three repeats, and each is reported as median [min–max] with the load average before
and after (the machines these run on are shared). The helpers below are what the parts share; importing this
package loads neither torch nor Ray.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def spread(values: list[float], digits: int = 4) -> dict:
    """{median, min, max, all} of repeated measurements."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "all": [round(v, digits) for v in values]}


def fmt(s: dict, digits: int = 3, unit: str = "") -> str:
    """A spread as 'median [min–max]'."""
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def rotated(names: list, repeat: int) -> list:
    """`names` starting at position `repeat`: each repeat runs every configuration, none always first."""
    k = repeat % len(names) if names else 0
    return names[k:] + names[:k]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host(device: str, load_before: tuple) -> dict:
    """Where the figures were taken: CPU, device, threads, load average before and now."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "machine": platform.machine(), "device": device,
            "omp_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def host_line(h: dict) -> str:
    return (f"Host: {h['cpu']}, {h['cpus']} CPUs shared with other jobs, device {h['device']}, "
            f"OMP_NUM_THREADS={h['omp_threads']}; load average {h['load_average_before'][0]:.1f} before, "
            f"{h['load_average_after'][0]:.1f} after; {h['date']}.")


def write(out: Path, result: dict, markdown: str) -> None:
    """OUT.json and OUT.md (OUT without suffix), and the Markdown on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown, flush=True)
