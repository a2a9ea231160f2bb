"""Bundle digests remembered across processes (harmony_rt.digests): reused while a file is unchanged, never
for a file that was rewritten (even at the same size with its mtime put back), recently written, or when the
cache is off; a broken store only means hashing again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from harmony_rt import digests
from harmony_rt.bundle import Bundle
from harmony_rt.digests import DigestCache
from harmony_rt.errors import BundleError


@pytest.fixture
def counted(monkeypatch):
    """Count the files actually read and hashed."""
    calls: list[Path] = []
    real = digests.sha256_file

    def counting(path, *a, **kw):
        calls.append(Path(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(digests, "sha256_file", counting)
    return calls


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (a test cannot age a file's ctime)."""
    monkeypatch.setattr(digests, "RACY_S", 0.0)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_reused_while_unchanged_across_instances(tmp_path, counted, settled):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    store = tmp_path / "c" / "digests.json"
    first = DigestCache(store)
    assert first.sha256(f) == _sha(f) and len(counted) == 1
    first.save()
    second = DigestCache(store)  # a later process
    assert second.sha256(f) == _sha(f) and len(counted) == 1
    assert json.loads(store.read_text())[str(f.resolve())][5] == _sha(f)


def test_rewrite_at_same_size_with_mtime_restored_is_hashed_again(tmp_path, counted, settled):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    st = f.stat()
    store = tmp_path / "digests.json"
    c = DigestCache(store)
    old = c.sha256(f)
    c.save()
    time.sleep(0.01)
    with open(f, "r+b") as fh:  # same inode, same size
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime moves regardless
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    new = DigestCache(store).sha256(f)
    assert new == _sha(f) != old and len(counted) == 2


def test_replaced_file_is_hashed_again(tmp_path, counted, settled):
    f, g = tmp_path / "w.bin", tmp_path / "x.bin"
    f.write_bytes(b"a" * 100)
    store = tmp_path / "digests.json"
    c = DigestCache(store)
    c.sha256(f)
    c.save()
    g.write_bytes(b"c" * 100)
    os.replace(g, f)
    assert DigestCache(store).sha256(f) == _sha(f) and len(counted) == 2


def test_recently_written_file_is_not_remembered(tmp_path, counted):
    f = tmp_path / "w.bin"
    f.write_bytes(b"fresh")
    store = tmp_path / "digests.json"
    c = DigestCache(store)
    c.sha256(f)
    c.save()
    assert not store.exists()  # nothing settled to store
    DigestCache(store).sha256(f)
    assert len(counted) == 2


def test_cache_off_and_broken_store(tmp_path, counted, settled, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a")
    monkeypatch.setenv("HARMONY_RT_CACHE", "off")
    off = DigestCache.default()
    assert off.store is None
    off.sha256(f), off.sha256(f)
    off.save()
    assert len(counted) == 2
    monkeypatch.setenv("HARMONY_RT_CACHE", str(tmp_path / "cache"))
    store = DigestCache.default().store
    store.parent.mkdir()
    store.write_text("{not json")
    c = DigestCache.default()
    assert c.sha256(f) == _sha(f)
    c.save()  # a broken store is replaced, not fatal
    assert json.loads(store.read_text())[str(f.resolve())][5] == _sha(f)


def test_bundle_load_hashes_once_and_still_refuses_tampering(tiny_bundle, tmp_path, counted, settled, monkeypatch):
    monkeypatch.setenv("HARMONY_RT_CACHE", str(tmp_path / "cache"))
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    Bundle.load(b)
    hashed = len(counted)
    assert hashed >= 7  # every graph and tokenizer
    Bundle.load(b)
    assert len(counted) == hashed  # the second load reads no graph bytes for hashing
    graph = b / "denoiser.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte flipped
    st = graph.stat()
    time.sleep(0.01)
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(b)
    n = len(counted)
    assert Bundle.load(b, verify=False) and len(counted) == n  # verify=False hashes nothing
