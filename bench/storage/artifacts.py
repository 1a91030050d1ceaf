"""Content-addressed artifact cache shared by every pipeline stage.

An artifact is a directory of files plus `manifest.json`. Its key is a hash of its kind, its inputs (configs,
upstream artifact keys) and the code-version salt, so changing any input gives a new artifact and rerunning the
same inputs reuses the old one. Builds happen in a temporary directory that is renamed into place only when
complete, under a file lock, so a crash or a concurrent process never exposes a partial artifact. Every reuse
checks the files against the hashes in the manifest; a corrupted artifact is reported by name and rebuilt.
An artifact built by a process that computes on a GPU has the GPU's name among its inputs (see `compute_device`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench import CODE_VERSION
from bench.errors import RuntimeFailure

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj: Any, length: int = 20) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota
DEVICE_FREE_KINDS = {"asset"}  # downloaded files: no arithmetic touches them, and a GPU machine may have no internet


def compute_device() -> str | None:
    """The name of the GPU this process computes on, None on a CPU. A model trained, sampled or scored on a GPU
    differs in its last bits from the same work on a CPU (other kernels, other summation orders), so such
    artifacts must not share a key with CPU-built ones; CPU keys stay what they always were. torch is asked only
    if something already imported it: the storage layer never loads it (`bench leaderboard` stays light), and a
    process without torch computes nothing on a GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see the old file or the new one.
    A full disk raises RuntimeFailure naming the path and the size; the temporary file is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise RuntimeFailure(f"no space left on the device to write {len(data):,} bytes to {path} "
                             f"({os.strerror(exc.errno)}); free space there, or choose another directory, and "
                             f"rerun: {'the old file is unchanged' if path.exists() else 'nothing was written'}."
                             ) from exc


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 1) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None):
    """An exclusive advisory lock held for the duration of the block (released if the process dies).
    `on_wait` is called once if another process holds it, before waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Artifact:
    kind: str
    key: str
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())


def keyed_inputs(kind: str, inputs: dict) -> dict:
    """`inputs` as the key and the manifest see them: with the GPU's name when this process computes on one."""
    device = None if kind in DEVICE_FREE_KINDS else compute_device()
    return {**inputs, "device": device} if device else inputs


class ArtifactCache:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def key(self, kind: str, inputs: dict) -> str:
        return self._key(kind, keyed_inputs(kind, inputs))

    @staticmethod
    def _key(kind: str, keyed: dict) -> str:
        return content_hash({"kind": kind, "inputs": keyed, "code_version": CODE_VERSION})

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get_or_build(self, kind: str, inputs: dict, build: Callable[[Path], None]) -> Artifact:
        """Return the verified artifact for `inputs`, building it with `build(tmp_dir)` if absent or corrupt."""
        inputs = keyed_inputs(kind, inputs)
        key = self._key(kind, inputs)
        final = self.path(kind, key)
        with file_lock(self.root / kind / f".{key}.lock"):
            if final.exists():
                problem = verify(final)
                if problem is None:
                    return Artifact(kind, key, final)
                log.warning("artifact %s/%s is corrupted (%s); rebuilding it", kind, key, problem)
                shutil.rmtree(final)
            for stale in final.parent.glob(f".{key}.building.*"):  # left by a builder that died; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}.building."))
            try:
                started = time.time()
                build(tmp)
                write_manifest(tmp, kind, key, inputs, seconds=time.time() - started)
                os.replace(tmp, final)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(exc, OSError) and exc.errno in NO_SPACE:  # a stage's own write (np.save, a model)
                    raise RuntimeFailure(f"no space left on the device to build artifact {kind}/{key} in "
                                         f"{final.parent} ({exc}); free space there, or point IRL_BENCH_CACHE at "
                                         f"another disk, and rerun: the partial build was removed.") from exc
                raise
        return Artifact(kind, key, final)

    def locate(self, path: str) -> str:
        """A path that an artifact recorded (a model directory, a features table), as it is under this cache.
        Artifacts refer to each other by absolute path, which goes stale when the cache is moved or mounted at
        another place (a cluster node, a copied results directory): a recorded path that no longer exists but
        ends in `<kind>/<key>/…` of an artifact here is rewritten to it. Other values (hub ids) pass unchanged."""
        recorded = Path(path)
        if not recorded.is_absolute() or recorded.exists():
            return path
        parts = recorded.parts
        for start in range(1, len(parts) - 1):
            candidate = self.root.joinpath(*parts[start:])
            if candidate.exists():
                return str(candidate)
        return path

    def load(self, kind: str, key: str) -> Artifact:
        """Open an artifact that must already exist (e.g. in a trial worker), verifying it."""
        path = self.path(kind, key)
        problem = verify(path) if path.exists() else "it does not exist"
        if problem is not None:
            raise FileNotFoundError(f"artifact {kind}/{key} cannot be used: {problem}")
        return Artifact(kind, key, path)

    def entries(self) -> list[Artifact]:
        found = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            found.append(Artifact(manifest.parent.parent.name, manifest.parent.name, manifest.parent))
        return found


def cache_for(runs_dir: Path) -> ArtifactCache:
    """Artifacts live under the runs directory unless IRL_BENCH_CACHE names a shared one (e.g. for a cluster)."""
    return ArtifactCache(Path(os.environ.get("IRL_BENCH_CACHE") or Path(runs_dir) / "cache").resolve())


def write_manifest(directory: Path, kind: str, key: str, inputs: dict, **extra) -> None:
    files = {
        str(p.relative_to(directory)): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"kind": kind, "key": key, "inputs": inputs, "code_version": CODE_VERSION, "files": files, **extra}
    atomic_write_json(directory / MANIFEST, manifest)


def verify(directory: Path) -> str | None:
    """None if every file listed in the manifest is present with its recorded hash, else what is wrong."""
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return "its manifest is missing"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "its manifest is unreadable"
    for name, digest in manifest.get("files", {}).items():
        path = directory / name
        if not path.exists():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its recorded hash"
    return None
