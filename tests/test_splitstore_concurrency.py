"""harmony_rt.splitstore: puts from several processes at once into one store all survive (an flock around
the read-merge-write), and a filesystem without flock only loses the lock, not the put."""

import logging
import multiprocessing as mp

from harmony_rt import splitstore

PROCS, PUTS = 4, 50
CONTEXT = {"denoiser": "abc", "backend": "ort"}


def _putter(path, proc, barrier):
    store = splitstore.SplitStore(path, CONTEXT)
    barrier.wait()  # all start together: the read-merge-write windows overlap
    for i in range(PUTS):
        store.put(("shape", proc, i), "batched" if i % 2 else "sequential", {"batched": 0.1, "sequential": 0.2})


def test_concurrent_puts_from_several_processes_all_survive(tmp_path):
    path = tmp_path / "splits.json"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCS)
    procs = [ctx.Process(target=_putter, args=(path, p, barrier)) for p in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * PROCS
    store = splitstore.SplitStore(path, CONTEXT)
    missing = [(p, i) for p in range(PROCS) for i in range(PUTS) if store.get(("shape", p, i)) is None]
    assert not missing, f"{len(missing)} of {PROCS * PUTS} puts lost, e.g. {missing[:5]}"
    assert all(store.get(("shape", p, i)) == ("batched" if i % 2 else "sequential")
               for p in range(PROCS) for i in range(PUTS))


def test_put_without_flock_support_still_writes(tmp_path, monkeypatch, caplog):
    """flock refused (a filesystem without it): the put happens unlocked, logged at debug level, no exception."""
    def refuse(fd, op):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(splitstore.fcntl, "flock", refuse)
    store = splitstore.SplitStore(tmp_path / "splits.json", CONTEXT)
    with caplog.at_level(logging.DEBUG, logger="harmony_rt.splitstore"):
        store.put(("k",), "batched", {"batched": 0.1})
    assert splitstore.SplitStore(tmp_path / "splits.json", CONTEXT).get(("k",)) == "batched"
    assert any("lock" in r.getMessage() for r in caplog.records)


def test_put_with_an_unopenable_lock_file_still_writes(tmp_path, monkeypatch):
    """The lock file cannot be created (its name taken by a folder): the put happens unlocked."""
    (tmp_path / "splits.json.lock").mkdir()
    store = splitstore.SplitStore(tmp_path / "splits.json", CONTEXT)
    store.put(("k",), "sequential", {"sequential": 0.1})
    assert store.get(("k",)) == "sequential"
