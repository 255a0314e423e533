"""A1111-style hashes and the on-disk hash cache."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from webui.models.hashes import HashCache, legacy_model_hash, sha256_file, short_hash

KNOWN = b"hello world\n"
KNOWN_SHA = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447"


class CountingHasher:
    def __init__(self) -> None:
        self.calls: list[Path] = []
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> str:
        with self.lock:
            self.calls.append(path)
        return sha256_file(path)


def test_sha256_and_short_hash_of_known_bytes(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(KNOWN)
    assert sha256_file(f) == KNOWN_SHA == hashlib.sha256(KNOWN).hexdigest()
    assert sha256_file(f, chunk=3) == KNOWN_SHA
    assert short_hash(KNOWN_SHA) == "a948904f2f"


def test_legacy_model_hash_reads_64k_at_1mib(tmp_path: Path) -> None:
    data = bytes(range(256)) * (0x120000 // 256)
    f = tmp_path / "m.ckpt"
    f.write_bytes(data)
    assert legacy_model_hash(f) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_legacy_model_hash_of_small_file_hashes_nothing(tmp_path: Path) -> None:
    f = tmp_path / "tiny.ckpt"
    f.write_bytes(b"x" * 100)
    assert legacy_model_hash(f) == hashlib.sha256(b"").hexdigest()[:8]


def test_hash_is_computed_once(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(KNOWN)
    hasher = CountingHasher()
    cache = HashCache(tmp_path / "cache.json", hasher=hasher)
    assert cache.get(f) == KNOWN_SHA
    assert cache.get(f) == KNOWN_SHA
    assert cache.short(f) == "a948904f2f"
    assert len(hasher.calls) == 1


def test_not_computed_when_compute_is_false(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(KNOWN)
    hasher = CountingHasher()
    cache = HashCache(tmp_path / "cache.json", hasher=hasher)
    assert cache.get(f, compute=False) is None
    assert hasher.calls == []


def test_changed_file_is_hashed_again(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(KNOWN)
    hasher = CountingHasher()
    cache = HashCache(tmp_path / "cache.json", hasher=hasher)
    cache.get(f)

    f.write_bytes(b"other content")  # new size
    assert cache.get(f, compute=False) is None
    assert cache.get(f) == hashlib.sha256(b"other content").hexdigest()

    f.write_bytes(b"OTHER CONTENT")  # same size: only the mtime tells
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache.get(f) == hashlib.sha256(b"OTHER CONTENT").hexdigest()
    assert len(hasher.calls) == 3


def test_cache_persists_across_instances(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(KNOWN)
    cache_file = tmp_path / "cache" / "hashes.json"
    HashCache(cache_file).get(f)

    hasher = CountingHasher()
    again = HashCache(cache_file, hasher=hasher)
    assert again.get(tmp_path / "." / "m.safetensors", compute=False) == KNOWN_SHA
    assert again.get(f) == KNOWN_SHA
    assert hasher.calls == []
    doc = json.loads(cache_file.read_text())
    assert doc["entries"][str(f.resolve())]["sha256"] == KNOWN_SHA
    assert [p.name for p in cache_file.parent.iterdir()] == ["hashes.json"]  # no temp files left


def test_unreadable_cache_file_starts_empty(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(KNOWN)
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{not json")
    cache = HashCache(cache_file)
    assert cache.get(f, compute=False) is None
    assert cache.get(f) == KNOWN_SHA
    assert json.loads(cache_file.read_text())["version"] == 1


def test_concurrent_lookups_keep_a_valid_cache(tmp_path: Path) -> None:
    files = []
    for i in range(8):
        f = tmp_path / f"m{i}.safetensors"
        f.write_bytes(KNOWN * (i + 1))
        files.append(f)
    cache_file = tmp_path / "cache.json"
    cache = HashCache(cache_file)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for f in files:
                assert cache.get(f) == sha256_file(f)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(json.loads(cache_file.read_text())["entries"]) == len(files)


def test_a_second_lookup_waits_for_the_hash_already_running_instead_of_reading_the_file_again(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(KNOWN)
    started, release = threading.Event(), threading.Event()
    calls: list[Path] = []

    def slow(path: Path) -> str:
        calls.append(path)
        started.set()
        assert release.wait(10)
        return sha256_file(path)

    cache = HashCache(tmp_path / "cache.json", hasher=slow)
    background = threading.Thread(target=cache.get, args=(f,))  # what the app starts after a load
    background.start()
    assert started.wait(10)
    assert cache.get(f, compute=False) is None  # a lookup that must not wait does not
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(cache.get(f)))  # the first image's infotext
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and got == []  # waiting, not hashing a second time
    release.set()
    waiter.join(10)
    background.join(10)
    assert got == [KNOWN_SHA] and len(calls) == 1
