"""SyncCFG / text CFG: batch layout, the guidance equations, batched vs sequential execution, auto split."""

import logging
import threading

import numpy as np
import pytest

from harmony_rt.errors import HarmonyError
from harmony_rt.guidance import (
    MODES,
    GuidanceScales,
    GuidedDenoiser,
    branches,
    build_batch,
    combine,
)

B = 2


def _masked_sum(emb, mask):
    """[N, L, D], [N, L] -> [N]: weighted masked pooling, unchanged by zero padding with mask 0."""
    w = np.arange(1, emb.shape[-1] + 1, dtype=emb.dtype)
    return (emb * mask[..., None] * w).sum((1, 2)) / (1.0 + mask.sum(1))


def _bc(x, ndim):
    return x.reshape((-1,) + (1,) * (ndim - 1))


def fake_denoiser(feeds):
    """Deterministic, nonlinear, row-independent stand-in for the joint network; depends on every input."""
    vl, al = feeds["video_latent"], feeds["audio_latent"]  # [N, C_v, F, H, W], [N, S, T, C_a]
    n = vl.shape[0]
    ctx = np.tanh(
        0.7 * _masked_sum(feeds["text_emb"], feeds["text_mask"])
        + 0.5 * _masked_sum(feeds["speech_emb"], feeds["speech_mask"])
        - 0.3 * _masked_sum(feeds["ref_latent"], feeds["ref_mask"])
    )  # [N]
    v_sum = np.tanh(vl.reshape(n, -1).mean(1))  # [N]
    a_sum = np.tanh(al.reshape(n, -1).mean(1))  # [N]
    tv, ta = feeds["t_video"], feeds["t_audio"]
    vv = np.tanh(0.8 * vl + _bc(ctx + 0.9 * a_sum + 1.3 * tv - 0.7 * ta, vl.ndim))
    va = np.tanh(0.6 * al + _bc(ctx - 1.1 * v_sum + 0.7 * ta + 0.4 * tv, al.ndim))
    return {"video_velocity": vv.astype(np.float32), "audio_velocity": va.astype(np.float32)}


class Recorder:
    """Wraps a denoiser; records the batch size of every call; optionally advances a fake clock."""

    def __init__(self, fn=fake_denoiser, clock=None, cost=None):
        self.fn, self.clock, self.cost, self.rows = fn, clock, cost, []
        self._lock = threading.Lock()

    def __call__(self, feeds):
        n = feeds["video_latent"].shape[0]
        with self._lock:
            self.rows.append(n)
        if self.clock is not None:
            self.clock.now += self.cost(n)
        return self.fn(feeds)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _cond(rng, L=5, P=7, R=3, batch=B):
    f = np.float32
    return {
        "text_emb": rng.standard_normal((batch, L, 8)).astype(f),
        "text_mask": (rng.random((batch, L)) > 0.2).astype(f),
        "speech_emb": rng.standard_normal((batch, P, 6)).astype(f),
        "speech_mask": np.ones((batch, P), f),
        "ref_latent": rng.standard_normal((batch, R, 4)).astype(f),
        "ref_mask": np.ones((batch, R), f),
    }


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    f = np.float32
    return dict(
        z_v=rng.standard_normal((B, 3, 2, 4, 5)).astype(f),  # [B, C_v, F, H, W]
        z_a=rng.standard_normal((B, 1, 6, 4)).astype(f),  # [B, S, T, C_a]
        t_v=np.array([0.9, 0.4], f),
        t_a=np.array([0.7, 0.2], f),
        cond=_cond(rng),
        uncond=_cond(rng, L=5),
        null_video=rng.standard_normal((B, 3, 2, 4, 5)).astype(f),
        null_audio=rng.standard_normal((B, 1, 6, 4)).astype(f),
    )


def _feeds(z_v, z_a, t_v, t_a, c):
    return {"video_latent": z_v, "audio_latent": z_a, "t_video": t_v, "t_audio": t_a, **c}


def _separate(x):
    """The four branches, each its own B-row call of the fake denoiser."""
    zero = np.zeros(B, np.float32)
    return {
        "joint": fake_denoiser(_feeds(x["z_v"], x["z_a"], x["t_v"], x["t_a"], x["cond"])),
        "uncond": fake_denoiser(_feeds(x["z_v"], x["z_a"], x["t_v"], x["t_a"], x["uncond"])),
        "mute": fake_denoiser(_feeds(x["z_v"], x["null_audio"], x["t_v"], zero, x["cond"])),
        "static": fake_denoiser(_feeds(x["null_video"], x["z_a"], zero, x["t_a"], x["cond"])),
    }


SCALES = GuidanceScales(s_v=3.0, s_a=2.0, cfg=5.0)


# ---------------------------------------------------------------- equations


def test_sync_is_eq_9_10_from_separate_calls(inputs):
    sep = _separate(inputs)
    j, m, s = sep["joint"], sep["mute"], sep["static"]
    want_v = m["video_velocity"] + 3.0 * (j["video_velocity"] - m["video_velocity"])
    want_a = s["audio_velocity"] + 2.0 * (j["audio_velocity"] - s["audio_velocity"])
    v, a = GuidedDenoiser(fake_denoiser, "sync", SCALES, split="batched")(**inputs)
    assert v.shape == inputs["z_v"].shape and a.shape == inputs["z_a"].shape and v.dtype == np.float32
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(a, want_a)
    # the guidance did something: not the plain joint prediction
    assert np.abs(v - j["video_velocity"]).max() > 1e-2 and np.abs(a - j["audio_velocity"]).max() > 1e-2


def test_cfg_and_sync_cfg_by_hand(inputs):
    sep = _separate(inputs)
    c, u, m, s = (sep[k] for k in ("joint", "uncond", "mute", "static"))
    cv, ca = c["video_velocity"], c["audio_velocity"]
    v, a = GuidedDenoiser(fake_denoiser, "cfg", SCALES, split="batched")(**inputs)
    np.testing.assert_allclose(v, cv + 4.0 * (cv - u["video_velocity"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a, ca + 4.0 * (ca - u["audio_velocity"]), rtol=1e-6, atol=1e-6)
    v, a = GuidedDenoiser(fake_denoiser, "sync+cfg", SCALES, split="batched")(**inputs)
    want_v = cv + 2.0 * (cv - m["video_velocity"]) + 4.0 * (cv - u["video_velocity"])
    want_a = ca + 1.0 * (ca - s["audio_velocity"]) + 4.0 * (ca - u["audio_velocity"])
    np.testing.assert_allclose(v, want_v, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a, want_a, rtol=1e-6, atol=1e-6)
    v, a = GuidedDenoiser(fake_denoiser, "none", SCALES)(**inputs)
    np.testing.assert_array_equal(v, cv)
    np.testing.assert_array_equal(a, ca)


def test_sync_cfg_reduces_to_sync_and_to_cfg(inputs):
    def run(mode, scales):
        return GuidedDenoiser(fake_denoiser, mode, scales, split="batched")(**inputs)

    for got, want in (
        (run("sync+cfg", GuidanceScales(3.0, 2.0, cfg=1.0)), run("sync", GuidanceScales(3.0, 2.0, cfg=7.0))),
        (run("sync+cfg", GuidanceScales(1.0, 1.0, cfg=5.0)), run("cfg", GuidanceScales(4.0, 6.0, cfg=5.0))),
    ):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    # and the two reductions are genuinely different guidance
    assert np.abs(run("sync", SCALES)[0] - run("cfg", SCALES)[0]).max() > 1e-2


def test_combine_uses_only_its_scales():
    out = {"video_velocity": np.arange(3.0)[:, None], "audio_velocity": np.arange(3.0)[:, None] * 10}
    v, a = combine("sync", out, 1, GuidanceScales(s_v=2.0, s_a=3.0, cfg=99.0))
    assert v[0, 0] == 1.0 + 2.0 * (0.0 - 1.0)  # mute + s_v (joint - mute)
    assert a[0, 0] == 20.0 + 3.0 * (0.0 - 20.0)  # static + s_a (joint - static)
    with pytest.raises(HarmonyError):
        combine("sync", out, 2, GuidanceScales())  # 3 rows is not 3 branches x 2
    with pytest.raises(HarmonyError):
        combine("none", {"video_velocity": out["video_velocity"]}, 3, GuidanceScales())


# ---------------------------------------------------------------- batch layout


def test_branch_order():
    assert MODES == ("none", "cfg", "sync", "sync+cfg")
    assert branches("sync") == ("joint", "mute", "static")
    assert branches("sync+cfg") == ("joint", "uncond", "mute", "static")
    assert branches("cfg") == ("joint", "uncond") and branches("none") == ("joint",)


def test_anchor_branches_see_null_partner_and_zero_time(inputs):
    x = inputs
    f = build_batch("sync+cfg", **x)
    assert all(a.shape[0] == 4 * B for a in f.values())
    assert f["t_video"].dtype == np.float32 and f["t_audio"].dtype == np.float32
    j, u, m, s = (slice(i * B, (i + 1) * B) for i in range(4))
    for rows in (j, u):
        np.testing.assert_array_equal(f["video_latent"][rows], x["z_v"])
        np.testing.assert_array_equal(f["audio_latent"][rows], x["z_a"])
        np.testing.assert_array_equal(f["t_video"][rows], x["t_v"])
        np.testing.assert_array_equal(f["t_audio"][rows], x["t_a"])
    np.testing.assert_array_equal(f["text_emb"][j], x["cond"]["text_emb"])
    np.testing.assert_array_equal(f["text_emb"][u], x["uncond"]["text_emb"])
    # mute: real video, null (silent) audio at t_audio = 0
    np.testing.assert_array_equal(f["video_latent"][m], x["z_v"])
    np.testing.assert_array_equal(f["audio_latent"][m], x["null_audio"])
    np.testing.assert_array_equal(f["t_video"][m], x["t_v"])
    np.testing.assert_array_equal(f["t_audio"][m], 0.0)
    # static: null (still) video at t_video = 0, real audio
    np.testing.assert_array_equal(f["video_latent"][s], x["null_video"])
    np.testing.assert_array_equal(f["audio_latent"][s], x["z_a"])
    np.testing.assert_array_equal(f["t_video"][s], 0.0)
    np.testing.assert_array_equal(f["t_audio"][s], x["t_a"])
    for k in x["cond"]:  # anchors are conditional
        np.testing.assert_array_equal(f[k][m], x["cond"][k])
        np.testing.assert_array_equal(f[k][s], x["cond"][k])


def test_scalar_timesteps_broadcast(inputs):
    x = dict(inputs, t_v=0.5, t_a=0.25)
    f = build_batch("sync", **x)
    np.testing.assert_array_equal(f["t_video"], np.array([0.5, 0.5, 0.5, 0.5, 0.0, 0.0], np.float32))
    np.testing.assert_array_equal(f["t_audio"], np.array([0.25, 0.25, 0.0, 0.0, 0.25, 0.25], np.float32))


@pytest.mark.parametrize("l_cond,l_uncond", [(5, 3), (2, 6)])
def test_padding_of_different_lengths(inputs, l_cond, l_uncond):
    rng = np.random.default_rng(4)
    x = dict(inputs, cond=_cond(rng, L=l_cond, R=2), uncond=_cond(rng, L=l_uncond, R=4))
    f = build_batch("cfg", **x)
    n = max(l_cond, l_uncond)
    assert f["text_emb"].shape == (2 * B, n, 8) and f["text_mask"].shape == (2 * B, n)
    assert f["ref_latent"].shape == (2 * B, 4, 4) and f["speech_emb"].shape == (2 * B, 7, 6)
    for rows, c, ln in ((slice(0, B), x["cond"], l_cond), (slice(B, 2 * B), x["uncond"], l_uncond)):
        np.testing.assert_array_equal(f["text_emb"][rows, :ln], c["text_emb"])
        np.testing.assert_array_equal(f["text_mask"][rows, :ln], c["text_mask"])
        assert not f["text_emb"][rows, ln:].any() and not f["text_mask"][rows, ln:].any()
    # with a mask-respecting network the padding changes nothing
    v, _ = GuidedDenoiser(fake_denoiser, "cfg", GuidanceScales(cfg=1.0 + 1.0), split="sequential")(**x)
    sep = _separate(x)
    want = 2 * sep["joint"]["video_velocity"] - sep["uncond"]["video_velocity"]
    np.testing.assert_allclose(v, want, rtol=1e-6, atol=1e-6)


def test_bad_inputs_raise(inputs):
    x = inputs
    with pytest.raises(HarmonyError):
        build_batch("cfg", **dict(x, uncond=None))
    with pytest.raises(HarmonyError):
        build_batch("sync", **dict(x, null_audio=None))
    with pytest.raises(HarmonyError):
        build_batch("sync", **dict(x, null_video=x["null_video"][:, :, :1]))
    bad = dict(x["uncond"], text_emb=x["uncond"]["text_emb"][..., :3])  # differs beyond the sequence axis
    with pytest.raises(HarmonyError):
        build_batch("cfg", **dict(x, uncond=bad))
    # modes that need no uncond / null latents do not ask for them
    f = build_batch("none", x["z_v"], x["z_a"], x["t_v"], x["t_a"], x["cond"])
    assert f["video_latent"].shape[0] == B


@pytest.mark.parametrize("mode", ["bogus", "SYNC", ""])
def test_unknown_mode_raises(inputs, mode):
    with pytest.raises(HarmonyError):
        branches(mode)
    with pytest.raises(HarmonyError):
        build_batch(mode, **inputs)
    with pytest.raises(HarmonyError):
        combine(mode, {}, B, SCALES)
    with pytest.raises(HarmonyError):
        GuidedDenoiser(fake_denoiser, mode)
    with pytest.raises(HarmonyError):
        GuidedDenoiser(fake_denoiser, "sync", split=mode)


# ---------------------------------------------------------------- execution


@pytest.mark.parametrize("mode", MODES)
def test_batched_equals_sequential_equals_separate_calls(inputs, mode):
    rb, rs = Recorder(), Recorder()
    vb, ab = GuidedDenoiser(rb, mode, SCALES, split="batched")(**inputs)
    vs, as_ = GuidedDenoiser(rs, mode, SCALES, split="sequential")(**inputs)
    k = len(branches(mode))
    assert rb.rows == [k * B]  # ONE call with every branch stacked
    assert rs.rows == [B] * k  # one call per branch
    np.testing.assert_array_equal(vb, vs)
    np.testing.assert_array_equal(ab, as_)
    # and the stacked raw outputs are the separate calls, row block by row block
    sep = _separate(inputs)
    out = fake_denoiser(build_batch(mode, **inputs))
    for i, name in enumerate(branches(mode)):
        for key in ("video_velocity", "audio_velocity"):
            np.testing.assert_array_equal(out[key][i * B : (i + 1) * B], sep[name][key])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("held", ["audio", "video"])
def test_a_given_modality_drops_its_anchor_and_the_other_is_unchanged(inputs, mode, held):
    """A2V (audio given) has no use for the static row, V2A (video given) none for the mute row: the step runs
    one branch fewer in the sync modes, and the generated modality's guided velocity is exactly as before."""
    full, part = Recorder(), Recorder()
    v, a = GuidedDenoiser(full, mode, SCALES, split="batched")(**inputs)
    pv, pa = GuidedDenoiser(part, mode, SCALES, split="batched", held=held)(**inputs)
    dropped = {"audio": "static", "video": "mute"}[held]
    assert part.rows == [(len(branches(mode)) - (dropped in branches(mode))) * B]
    generated_full, generated_part = (v, pv) if held == "audio" else (a, pa)
    np.testing.assert_array_equal(generated_part, generated_full)


@pytest.mark.parametrize("cost,expected", [(lambda n: 10.0 + n, "batched"), (lambda n: float(n * n), "sequential")])
def test_auto_measures_once_per_shape_and_picks_the_faster(inputs, cost, expected, caplog):
    clock = FakeClock()
    rec = Recorder(clock=clock, cost=cost)
    g = GuidedDenoiser(rec, "sync", SCALES, split="auto", repeats=2, early=None, clock=clock)
    with caplog.at_level(logging.INFO, logger="harmony_rt.guidance"):
        outs = [g(**inputs) for _ in range(2 * 2)]  # the measurement runs as real steps: b s s b
    v, a = outs[0]
    for vo, ao in outs[1:]:  # every measured step gives the same numbers whichever split it ran
        np.testing.assert_array_equal(vo, v)
        np.testing.assert_array_equal(ao, a)
    assert len(g.decisions) == 1 and list(g.decisions.values()) == [expected]
    assert expected in caplog.text
    assert len(rec.rows) == 2 * (1 + 3)  # 2 repeats x (1 batched + 3 sequential calls), no extra calls
    (key,) = g.decisions
    assert g.timings[key]["batched"] == cost(3 * B) and g.timings[key]["sequential"] == 3 * cost(B)
    # cached: the same shapes run the chosen way only
    rec.rows.clear()
    v2, a2 = g(**dict(inputs, t_v=np.array([0.3, 0.1], np.float32)))
    assert rec.rows == ([3 * B] if expected == "batched" else [B] * 3) and len(g.decisions) == 1
    # same numbers as both explicit splits
    for split in ("batched", "sequential"):
        ve, ae = GuidedDenoiser(fake_denoiser, "sync", SCALES, split=split)(**inputs)
        np.testing.assert_array_equal(v, ve)
        np.testing.assert_array_equal(a, ae)
    # a new shape (longer audio) is a new key
    rng = np.random.default_rng(5)
    longer = dict(inputs, z_a=rng.standard_normal((B, 1, 9, 4)).astype(np.float32))
    longer["null_audio"] = np.zeros_like(longer["z_a"])
    for _ in range(2 * 2):
        g(**longer)
    assert len(g.decisions) == 2
    # another caption length is not: the latents set the work (a server sees a new length per prompt)
    rec.rows.clear()
    g(**dict(inputs, cond=_cond(np.random.default_rng(6), L=9), uncond=_cond(np.random.default_rng(7), L=2)))
    assert len(g.decisions) == 2 and rec.rows == ([3 * B] if expected == "batched" else [B] * 3)


def test_auto_is_thread_safe(inputs):
    clock = FakeClock()
    rec = Recorder(clock=clock, cost=lambda n: 10.0 + n)
    g = GuidedDenoiser(rec, "sync", SCALES, split="auto", repeats=2, early=None, clock=clock)
    results = [None] * 6

    def work(i):
        results[i] = g(**inputs)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(g.decisions) == 1
    # the first 2 x repeats calls are the measurement, run as real steps in the order b s s b (1 + 3 + 3 + 1
    # network calls); the remaining two threads ran the chosen (batched: cheaper here) split, one call each
    assert len(rec.rows) == (1 + 3 + 3 + 1) + 2
    for v, a in results[1:]:
        np.testing.assert_array_equal(v, results[0][0])
        np.testing.assert_array_equal(a, results[0][1])


def test_auto_decides_early_on_a_clear_gap(inputs):
    """Batched 16 vs sequential 36 time units: decided after one call of each (b s), not after 2 x repeats."""
    clock = FakeClock()
    rec = Recorder(clock=clock, cost=lambda n: 10.0 + n)
    g = GuidedDenoiser(rec, "sync", SCALES, split="auto", repeats=3, clock=clock)
    for _ in range(3):
        g(**inputs)
    assert list(g.decisions.values()) == ["batched"]
    assert rec.rows == [3 * B, B, B, B, 3 * B]  # b, s (measured), then batched from the third step


@pytest.mark.parametrize("cost,expected", [(lambda n: 10.0 + n, "batched"), (lambda n: float(n * n), "sequential")])
def test_early_decision_is_not_fooled_by_the_warm_up_call(inputs, cost, expected):
    """The key's first call (batched) also pays 100 units of warm-up: its one timing never decides early."""
    clock = FakeClock()
    calls = []

    def warm(n):
        calls.append(n)
        return cost(n) + (100.0 if len(calls) == 1 else 0.0)

    rec = Recorder(clock=clock, cost=warm)
    g = GuidedDenoiser(rec, "sync", SCALES, split="auto", repeats=3, clock=clock)
    for _ in range(3):  # b s s: the warmed-up batched timing is the only one of its split
        g(**inputs)
    assert not g.decisions
    g(**inputs)  # b again: now a clear gap either way
    assert list(g.decisions.values()) == [expected]


def test_mode_none_never_measures(inputs):
    rec = Recorder()
    g = GuidedDenoiser(rec, "none", SCALES, split="auto")
    g(**inputs)
    assert rec.rows == [B] and g.decisions == {}


def test_split_store_lets_a_later_process_skip_the_measuring(inputs, tmp_path):
    from harmony_rt.splitstore import SplitStore

    ctx = {"denoiser": "abc", "backend": "ort", "threads": 2}
    clock = FakeClock()
    rec = Recorder(clock=clock, cost=lambda n: float(n * n))  # sequential is cheaper
    first = GuidedDenoiser(rec, "sync", SCALES, split="auto", repeats=2, clock=clock,
                           store=SplitStore(tmp_path / "s.json", ctx))
    for _ in range(4):
        first(**inputs)
    assert list(first.decisions.values()) == ["sequential"]
    # a new "process": a new denoiser and store on the same file decides on its first call, measuring nothing
    rec.rows.clear()
    later = GuidedDenoiser(rec, "sync", SCALES, split="auto", repeats=2, clock=clock,
                           store=SplitStore(tmp_path / "s.json", ctx))
    later(**inputs)
    assert list(later.decisions.values()) == ["sequential"] and not later.timings and rec.rows == [B] * 3
    # another graph or setting is another key: measured again
    other = GuidedDenoiser(rec, "sync", SCALES, split="auto", repeats=2, clock=clock,
                           store=SplitStore(tmp_path / "s.json", dict(ctx, threads=1)))
    other(**inputs)
    assert not other.decisions


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "[" * 100000 + "]" * 100000])
def test_split_store_survives_a_corrupt_file_and_can_be_switched_off(inputs, tmp_path, monkeypatch, content):
    from harmony_rt import splitstore

    path = tmp_path / "s.json"
    path.write_text(content)  # deeply nested JSON raised RecursionError through generate before usercache.read_store
    store = splitstore.SplitStore(path, {"x": 1})
    assert store.get(("k",)) is None
    store.put(("k",), "batched", {"batched": 0.1, "sequential": 0.2})
    assert splitstore.SplitStore(path, {"x": 1}).get(("k",)) == "batched"
    monkeypatch.setenv("HARMONY_RT_CACHE", "off")
    assert splitstore.SplitStore.default({}) is None
    monkeypatch.setenv("HARMONY_RT_CACHE", str(tmp_path / "c"))
    assert splitstore.SplitStore.default({}).path == tmp_path / "c" / splitstore.FILE
