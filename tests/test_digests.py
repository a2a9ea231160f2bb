"""Bundle digests remembered across processes (harmony_rt.digests): reused while a file is unchanged, never
for a file that was rewritten (even at the same size with its mtime put back), replaced, recently written or
changed while hashed, nor when the cache is off; a stale or broken store only means hashing again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from harmony_rt import digests, usercache
from harmony_rt.bundle import Bundle, default_bundle_path
from harmony_rt.digests import DigestCache
from harmony_rt.errors import BundleError


@pytest.fixture
def counted(monkeypatch):
    """Count the files actually read and hashed."""
    calls: list[object] = []
    real = digests._hash

    def counting(f, *a, **kw):
        calls.append(f)
        return real(f, *a, **kw)

    monkeypatch.setattr(digests, "_hash", counting)
    return calls


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (a test cannot age a file's ctime)."""
    monkeypatch.setattr(digests, "RACY_S", 0.0)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _rewrite_keeping_mtime(f: Path, data: bytes, at: int = 0) -> None:
    """Same inode, same size, mtime put back; skip where the file system did not move ctime (coarse clock)."""
    st = f.stat()
    time.sleep(0.02)
    with open(f, "r+b") as fh:
        fh.seek(at)
        fh.write(data)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = f.stat()
    assert now.st_mtime_ns == st.st_mtime_ns and now.st_size == st.st_size and now.st_ino == st.st_ino
    if now.st_ctime_ns == st.st_ctime_ns:
        pytest.skip("this file system's ctime did not move within 20 ms")


def test_reused_while_unchanged_across_instances(tmp_path, counted, settled):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    store = tmp_path / "c" / "digests.json"
    first = DigestCache(store)
    assert first.sha256(f) == _sha(f) and len(counted) == 1
    first.save()
    second = DigestCache(store)  # a later process
    assert second.sha256(f) == _sha(f) and second.matches(f, _sha(f)) and len(counted) == 1
    assert json.loads(store.read_text())[str(f.resolve())][5] == _sha(f)


def test_a_digest_in_use_is_not_evicted(tmp_path, counted, settled, monkeypatch):
    """Reusing a digest within MAX_ENTRIES // 2 entries of eviction moves it to the end (evicted last);
    reusing any other writes nothing."""
    monkeypatch.setattr(digests, "MAX_ENTRIES", 4)
    store = tmp_path / "digests.json"
    files = []
    for i in range(5):
        f = tmp_path / f"w{i}.bin"
        f.write_bytes(bytes([i]) * 100)
        files.append(f)
    c = DigestCache(store)
    for f in files[:4]:
        c.sha256(f)
    c.save()
    c = DigestCache(store)  # a later process uses the oldest file
    c.sha256(files[0])
    c.save()
    assert list(json.loads(store.read_text()))[-1] == str(files[0].resolve())
    before = store.stat().st_mtime_ns, store.stat().st_ino
    c = DigestCache(store)  # the newest: no write
    c.sha256(files[0])
    c.save()
    assert (store.stat().st_mtime_ns, store.stat().st_ino) == before
    monkeypatch.setattr(digests, "MAX_ENTRIES", 1024)  # far from full: reusing the oldest writes nothing either
    c = DigestCache(store)
    c.sha256(files[1])
    c.save()
    assert (store.stat().st_mtime_ns, store.stat().st_ino) == before
    monkeypatch.setattr(digests, "MAX_ENTRIES", 4)
    c = DigestCache(store)  # the newest again
    c.sha256(files[0])
    c.save()
    assert (store.stat().st_mtime_ns, store.stat().st_ino) == before
    c = DigestCache(store)  # a fifth file evicts the least recently used (w1), not w0
    c.sha256(files[4])
    c.save()
    kept = set(json.loads(store.read_text()))
    assert str(files[0].resolve()) in kept and str(files[1].resolve()) not in kept
    assert len(counted) == 5  # every reuse above read no bytes


def test_rewrite_at_same_size_with_mtime_restored_is_hashed_again(tmp_path, counted, settled):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    store = tmp_path / "digests.json"
    c = DigestCache(store)
    old = c.sha256(f)
    c.save()
    _rewrite_keeping_mtime(f, b"b")
    new = DigestCache(store).sha256(f)
    assert new == _sha(f) != old and len(counted) == 2


def test_replaced_file_is_hashed_again(tmp_path, counted, settled):
    f, g = tmp_path / "w.bin", tmp_path / "x.bin"
    f.write_bytes(b"a" * 100)
    store = tmp_path / "digests.json"
    c = DigestCache(store)
    c.sha256(f)
    c.save()
    st = f.stat()
    g.write_bytes(b"c" * 100)
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only inode (and ctime) differ
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


def test_file_changed_while_hashed_is_not_remembered(tmp_path, settled, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100)
    real = digests._hash

    def hash_then_write(fh, *a, **kw):
        out = real(fh, *a, **kw)
        time.sleep(0.02)
        f.write_bytes(b"b" * 100)  # same inode, same size: only the stamps after hashing tell
        return out

    monkeypatch.setattr(digests, "_hash", hash_then_write)
    c = DigestCache(tmp_path / "digests.json")
    c.sha256(f)
    c.save()
    assert not (tmp_path / "digests.json").exists()


def test_stale_stored_digest_never_refuses_a_good_file(tmp_path, counted, settled):
    f = tmp_path / "w.bin"
    f.write_bytes(b"good")
    st = f.stat()
    store = tmp_path / "digests.json"
    stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    store.write_text(json.dumps({str(f.resolve()): [*stamp, "0" * 64]}))  # matching stamps, wrong digest
    c = DigestCache(store)
    assert c.matches(f, _sha(f)) and len(counted) == 1  # the stored digest disagreed: hashed, not refused
    assert not c.matches(f, "1" * 64)
    c.save()
    assert json.loads(store.read_text())[str(f.resolve())][5] == _sha(f)  # and the store is mended


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "[" * 100000 + "]" * 100000, '{"x": 3, "y": [1]}',
                                     "\udcff"])
def test_broken_store_means_hashing_again(tmp_path, counted, settled, content):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a")
    store = tmp_path / "digests.json"
    store.write_bytes(content.encode("utf-8", "surrogateescape"))
    c = DigestCache(store)
    assert c.sha256(f) == _sha(f)
    c.save()
    assert json.loads(store.read_text())[str(f.resolve())][5] == _sha(f)


def test_cache_off_store_unwritable_and_no_home(tmp_path, counted, settled, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a")
    monkeypatch.setenv("HARMONY_RT_CACHE", "off")
    off = DigestCache.default()
    assert off.store is None
    off.sha256(f), off.sha256(f)
    off.save()
    assert len(counted) == 2
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("HARMONY_RT_CACHE", str(tmp_path / "afile"))  # the cache folder is a file
    c = DigestCache.default()
    assert c.sha256(f) == _sha(f)
    c.save()  # logged, not raised
    monkeypatch.delenv("HARMONY_RT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)  # no HOME, no passwd entry: "~" stays "~"
    assert usercache.cache_dir() is None


def test_bundle_hashes_once_and_still_refuses_tampering(tmp_path, counted, settled, monkeypatch):
    monkeypatch.setenv("HARMONY_RT_CACHE", str(tmp_path / "cache"))
    b = tmp_path / "b"
    shutil.copytree(default_bundle_path(), b)  # the shipped bundle: runs without torch
    Bundle.load(b).verify_all()
    hashed = len(counted)
    assert hashed >= 7  # every graph and tokenizer
    Bundle.load(b).verify_all()
    assert len(counted) == hashed  # the second process reads no file for hashing
    assert Bundle.load(b, verify=False).verify_all() and len(counted) == hashed  # verify=False hashes nothing
    graph = b / "denoiser.onnx"
    data = bytearray(graph.read_bytes())
    at = len(data) // 2  # inside the weights: the graph still parses
    _rewrite_keeping_mtime(graph, bytes([data[at] ^ 0xFF]), at)  # one byte flipped, stamps but ctime kept
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(b).component_path("denoiser")


def _with_variant(b: Path, name: str = "denoiser", key: str = "int8-dynamic") -> Path:
    """Add a variant to `b`'s manifest: a copy of the component's main graph (its I/O fits the contract)."""
    m = json.loads((b / "manifest.json").read_text())
    comp = m["components"][name]
    dst = b / f"{name}.{key}.onnx"
    shutil.copyfile(b / comp["file"], dst)
    comp.setdefault("variants", {})[key] = {"file": dst.name, "sha256": _sha(dst), "precision": key}
    (b / "manifest.json").write_text(json.dumps(m))
    return dst


def test_only_the_graphs_used_are_hashed(tmp_path, counted, monkeypatch):
    """A process running one precision hashes that precision's graphs, not every variant beside them; a
    corrupt variant it does not use does not stop it, and is refused when it is used."""
    from harmony_rt.backends.ort import OrtBackend

    monkeypatch.setenv("HARMONY_RT_CACHE", "off")
    b = tmp_path / "b"
    shutil.copytree(default_bundle_path(), b)
    variant = _with_variant(b)
    bundle = Bundle.load(b)
    assert counted == []  # the structure is checked at load; bytes when used
    OrtBackend(bundle, precision="int8-dynamic")  # the backend checks what it will run when it is made
    hashed = {Path(f.name).name for f in counted}
    assert "denoiser.int8-dynamic.onnx" in hashed and "denoiser.onnx" not in hashed
    assert {"text_encoder.onnx", "video_decoder.onnx"} <= hashed
    n = len(counted)
    bundle.component_path("denoiser", "int8-dynamic")
    assert len(counted) == n  # once per Bundle

    with open(variant, "r+b") as f:  # corrupt the variant: fp32 runs still start, int8-dynamic ones do not
        f.seek(100)
        f.write(b"\xff\xfe")
    bundle = Bundle.load(b)
    OrtBackend(bundle)
    with pytest.raises(BundleError, match="int8-dynamic.onnx: sha256 mismatch"):
        OrtBackend(bundle, precision="int8-dynamic")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(b).verify_all()


def test_unreadable_file_is_one_bundle_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMONY_RT_CACHE", str(tmp_path / "cache"))
    b = tmp_path / "b"
    shutil.copytree(default_bundle_path(), b)

    def refuse(path, *a, **kw):
        if str(path).endswith("denoiser.onnx") and "r" in (a[0] if a else kw.get("mode", "r")):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **kw)

    real_open = open
    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(BundleError, match="denoiser.onnx: cannot read") as ei:
        Bundle.load(b)
    assert len(str(ei.value).splitlines()) == 1


def test_a_relative_cache_folder_stays_where_it_was_first_used(tmp_path, monkeypatch):
    """HARMONY_RT_CACHE=rel made a `rel` folder in whatever folder a service stood in at each call."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARMONY_RT_CACHE", "rel-cache-s20")
    first = usercache.cache_dir()
    assert first == tmp_path / "rel-cache-s20"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert usercache.cache_dir() == first
    monkeypatch.setenv("HARMONY_RT_CACHE", "~/hrt-cache-s20")
    assert usercache.cache_dir() == Path(os.path.expanduser("~/hrt-cache-s20"))
