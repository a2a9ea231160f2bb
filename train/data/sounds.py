"""Percussive event sounds (modal synthesis) whose pitch / timbre follow the words of the caption.

Pitch = base of the sound family x size factor (small high, big low) x colour semitone; timbre = the floor
material for impacts (wooden knock, metallic clang, glassy clink, dull stone thud), a beep for flashes and a
thump for pulses. Every sound starts exactly at its event sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timbre:
    """A sound family: modal partials (frequency ratios, decay times, amplitudes) plus a noise click."""

    adjective: str  # audio-caption adjective ("wooden")
    noun: str  # singular audio-caption noun ("knock"); plural adds "s"
    base_hz: float
    ratios: tuple[float, ...]
    taus: tuple[float, ...]  # seconds
    amps: tuple[float, ...]
    noise: float = 0.0  # amplitude of the attack noise click
    gate: float = 0.0  # > 0: sustained tone of this many seconds (beeps)
    sweep: float = 0.0  # > 0: downward pitch glide depth (thumps)


MATERIALS: dict[str, Timbre] = {
    "wooden": Timbre("wooden", "knock", 520.0, (1.0, 2.57, 4.21), (0.06, 0.035, 0.02), (1.0, 0.5, 0.3), 0.35),
    "metal": Timbre("metallic", "clang", 700.0, (1.0, 2.76, 5.40, 8.93), (0.5, 0.35, 0.22, 0.12),
                    (1.0, 0.6, 0.4, 0.2), 0.1),
    "glass": Timbre("glassy", "clink", 1500.0, (1.0, 2.32, 4.25, 6.63), (0.3, 0.2, 0.12, 0.08),
                    (1.0, 0.5, 0.35, 0.2), 0.05),
    "stone": Timbre("dull", "thud", 220.0, (1.0, 1.6, 2.3), (0.04, 0.03, 0.02), (1.0, 0.6, 0.4), 0.6),
}
BEEP = Timbre("electronic", "beep", 880.0, (1.0, 2.0), (1.0, 1.0), (1.0, 0.2), 0.0, gate=0.12)
THUMP = Timbre("soft", "thump", 110.0, (1.0, 2.1), (0.12, 0.05), (1.0, 0.3), 0.2, sweep=1.0)

SIZE_PITCH = {"small": 1.5, "medium": 1.0, "big": 0.66}
SIZE_PITCH_WORD = {"small": "high-pitched", "medium": "", "big": "low-pitched"}
COLOUR_SEMITONE = {"red": 0, "orange": 2, "yellow": 4, "green": 5, "blue": 7, "purple": 9, "pink": 11}


def event_pitch(timbre: Timbre, size: str, colour: str) -> float:
    return timbre.base_hz * SIZE_PITCH[size] * 2.0 ** (COLOUR_SEMITONE[colour] / 12.0)


def render_event(timbre: Timbre, f0: float, sample_rate: int, rng: np.random.Generator,
                 max_seconds: float = 1.0) -> np.ndarray:
    """One event's waveform [n] float32, starting at sample 0, peak 1."""
    longest = timbre.gate + 5.0 * (max(timbre.taus) if not timbre.gate else 0.01)
    n = max(int(min(longest, max_seconds) * sample_rate), 8)
    t = np.arange(n, dtype=np.float64) / sample_rate
    out = np.zeros(n)
    for ratio, tau, amp in zip(timbre.ratios, timbre.taus, timbre.amps):
        f = f0 * ratio
        if f >= 0.45 * sample_rate:  # no aliasing partials
            continue
        if timbre.sweep:
            inst = f * (1.0 + timbre.sweep * np.exp(-t / 0.02))
            phase = 2 * np.pi * np.cumsum(inst) / sample_rate
        else:
            phase = 2 * np.pi * f * t
        env = np.exp(-t / tau)
        if timbre.gate:
            ramp = 0.005
            env = np.clip(np.minimum(t / ramp, (timbre.gate - t) / ramp), 0.0, 1.0)
        out += amp * env * np.sin(phase)
    if timbre.noise:
        out += timbre.noise * rng.standard_normal(n) * np.exp(-t / 0.004)
    attack = min(int(0.001 * sample_rate), n)  # 1 ms ramp: onset stays at sample 0
    out[:attack] *= np.linspace(0.0, 1.0, attack, endpoint=False) if attack else 1.0
    peak = np.abs(out).max()
    return (out / peak if peak > 0 else out).astype(np.float32)


def place(track: np.ndarray, sound: np.ndarray, start: int, gain: float) -> None:
    """Add gain * sound into track [W] at sample start (cut at the end)."""
    if start >= len(track):
        return
    n = min(len(sound), len(track) - start)
    track[start:start + n] += gain * sound[:n]
