"""The sounds of the synthetic DESED: one procedural generator per class, and the background noise.

Each generator maps (rng, samples, sample rate) to a mono float32 signal with its class's spectro-temporal
signature and random variation (pitch, duration, envelope, level): ringing harmonic bursts for alarms, harmonic
glides for cats, short decaying inharmonic clicks for dishes, band-limited noise for water and frying, a buzzing
sawtooth for shavers, a formant-shaped voiced source with syllable-rate modulation for speech, a motor hum plus
broadband noise for blenders and vacuum cleaners. `data/synthetic.py` mixes them into clips.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

F32 = np.float32


# Synthesis runs in float32 where it is safe (sines of small arguments, the harmonic recurrence, FFTs): on a slow
# CPU that is several times faster than float64, and the result is written as 16-bit PCM anyway.


def rms(x: np.ndarray) -> float:
    # Not np.dot: BLAS may split the sum by thread count, and the bytes written must not depend on the machine's cores.
    return float(np.sqrt(np.mean(np.square(x), dtype=np.float64)))


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n, dtype=F32) / F32(sr)


def _sin(x: np.ndarray) -> np.ndarray:
    """Sine of arguments of moderate size (|x| < ~1e3, e.g. slow modulators), in float32."""
    return np.sin(x.astype(F32))


def _phase(f0: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Instantaneous phase of a time-varying frequency (random start) in float32, reduced to [0, 2 pi) first:
    the running sum of cycles needs float64, the phase within a cycle does not."""
    cycles = np.cumsum(f0, dtype=np.float64) / sr + rng.uniform()
    return (cycles - np.floor(cycles)).astype(F32) * F32(2 * np.pi)


def _harmonic(phase: np.ndarray, amplitudes: list[float] | np.ndarray, f0_max: float, sr: int) -> np.ndarray:
    """Sum of a_k sin(k phase) over the harmonics that stay below Nyquist.

    sin(k phase) comes from the recurrence sin(kx) = 2 cos(x) sin((k-1)x) - sin((k-2)x): two multiply-adds per
    harmonic instead of a sine, and memory O(n)."""
    two_cos = 2 * np.cos(phase)
    previous, current = np.zeros_like(phase), np.sin(phase)
    out = np.zeros_like(phase)
    for k, a in enumerate(amplitudes, start=1):
        if k * f0_max >= 0.45 * sr:
            break
        out += F32(a) * current
        previous, current = current, two_cos * current - previous
    return out


def _shaped_noise(
    rng: np.random.Generator,
    n: int,
    sr: int,
    response: Callable[[np.ndarray], np.ndarray],
    channels: int | None = None,
) -> np.ndarray:
    """Gaussian noise with magnitude response `response(freqs)`, unit RMS, float32, (n,) or (channels, n).

    The spectrum of white noise is drawn directly (complex Gaussian), which saves a forward FFT."""
    freqs = np.fft.rfftfreq(n, 1 / sr).astype(F32)
    shape = (freqs.size, 2) if channels is None else (channels, freqs.size, 2)
    spectrum = rng.standard_normal(shape, dtype=F32).view(np.complex64)[..., 0]  # real and imaginary parts
    spectrum *= response(freqs).astype(F32)
    noise = np.fft.irfft(spectrum, n)
    return noise / F32(max(rms(noise), 1e-12))


def _band_noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    return _shaped_noise(rng, n, sr, lambda f: _band(f, low, min(high, 0.45 * sr)))


def _power_law(freqs: np.ndarray, exponent: float) -> np.ndarray:
    return np.maximum(freqs, freqs[1]) ** F32(exponent)


def _lowpass(freqs: np.ndarray, cutoff: float) -> np.ndarray:
    """A gentle (second-order-like) low-pass magnitude response."""
    return 1 / np.sqrt(1 + (freqs / F32(cutoff)) ** 4)


def _band(freqs: np.ndarray, low: float, high: float) -> np.ndarray:
    return _lowpass(freqs, high) * (1 - _lowpass(freqs, low))


def fades(n: int, sr: int, seconds: float = 0.005) -> np.ndarray:
    """Short linear fades so that events do not start or end with a click."""
    ramp = max(1, min(int(seconds * sr), n // 2))
    envelope = np.ones(n, F32)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[n - ramp :] = np.linspace(1.0, 0.0, ramp)
    return envelope


def _attack_release(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    t = _time(n, sr)
    return np.clip(np.minimum(t / F32(attack), (t[-1] - t) / F32(release)), 0.0, 1.0)


def background(rng: np.random.Generator, n: int, sr: int, channels: int) -> np.ndarray:
    """Coloured noise (white to brown), sometimes mains hum, with a slow level drift: float32 (channels, n), unit RMS."""
    colour, cutoff = (
        rng.uniform(0.0, 2.0),
        rng.uniform(3000.0, sr / 2),
    )  # spectral slope: 0 white, 1 pink, 2 brown
    noise = _shaped_noise(rng, n, sr, lambda f: _power_law(f, -colour / 2) * _lowpass(f, cutoff), channels)
    t = _time(n, sr)
    if rng.random() < 0.3:
        mains = float(rng.choice([50.0, 60.0]))
        hum = _harmonic(_phase(np.full(n, mains), sr, rng), 1 / np.arange(1, 6), mains, sr)
        noise += F32(rng.uniform(0.1, 0.5)) * hum
    noise *= 1 + F32(rng.uniform(0.0, 0.3)) * _sin(
        2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3)
    )
    return noise / F32(rms(noise))


# Per-class generators: (rng, samples, sample rate) -> mono signal of that length.


def alarm(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Ringing harmonic bursts: a struck bell repeated fast, or an electronic beeper switching on and off."""
    t = _time(n, sr)
    if rng.random() < 0.5:
        f0, rate, decay = rng.uniform(700, 1600), rng.uniform(6, 16), rng.uniform(0.03, 0.1)
        envelope = np.exp(-((t * rate) % 1) / (rate * decay))
        tone = _harmonic(_phase(np.full(n, f0), sr, rng), [1.0, 0.6, 0.4, 0.2], f0, sr)
    else:
        f0, rate = rng.uniform(1800, 3200), rng.uniform(2, 5)
        envelope = ((t * rate) % 1 < rng.uniform(0.4, 0.7)).astype(F32)
        tone = _harmonic(_phase(np.full(n, f0), sr, rng), [1.0, 0.0, 0.3], f0, sr)
    return tone * envelope


def blender(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A loaded motor: bright harmonic hum (180-350 Hz) that spins up, wobbles and is amplitude-modulated by the load,
    plus grinding noise in 1-5 kHz."""
    t = _time(n, sr)
    f0 = rng.uniform(180, 350)
    spin_up = 1 - 0.5 * np.exp(-t / rng.uniform(0.1, 0.3))
    wobble = 1 + 0.03 * _sin(2 * np.pi * rng.uniform(0.3, 1.5) * t)
    hum = _harmonic(_phase(f0 * spin_up * wobble, sr, rng), 1 / np.arange(1, 25) ** 0.7, f0 * 1.03, sr)
    load = 1 + 0.5 * _sin(2 * np.pi * rng.uniform(3, 9) * t)
    grind = F32(0.5 * rms(hum)) * _band_noise(rng, n, sr, 1000, 5000)
    return (hum + grind) * load * _attack_release(n, sr, 0.1, 0.1)


def cat(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A meow: a harmonic glide that rises then falls, with a formant emphasis around 1-2 kHz."""
    u = np.linspace(0.0, 1.0, n, dtype=F32)
    start, peak, end = rng.uniform(350, 600), rng.uniform(600, 1000), rng.uniform(300, 550)
    arch = np.maximum(np.sin(np.pi * u), 0)  # float32 sin(pi) is slightly negative
    f0 = start * (1 - u) + end * u + (peak - (start + end) / 2) * arch
    formant = rng.uniform(1000, 2000)
    k = np.arange(1, 9)
    amplitudes = np.exp(-(((k * peak - formant) / 900) ** 2)) + 0.3 / k
    return _harmonic(_phase(f0, sr, rng), amplitudes, f0.max(), sr) * arch**0.7


def dishes(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Clinks: a few short impacts, each a cluster of inharmonic partials (2-7 kHz) decaying in tens of ms."""
    out = np.zeros(n, F32)
    n_clicks = int(np.clip(1 + rng.poisson(n / sr * 6), 1, 8))
    for start in np.sort(rng.integers(0, max(1, n - int(0.02 * sr)), n_clicks)):
        decay = rng.uniform(0.01, 0.06)
        length = min(int(5 * decay * sr), n - start)
        t = _time(length, sr)
        freqs = rng.uniform(2000, min(7000, 0.45 * sr), (4, 1))
        ring = np.sin(2 * np.pi * freqs * t + rng.uniform(0, 2 * np.pi, (4, 1))).sum(axis=0)
        out[start : start + length] += rng.uniform(0.3, 1.0) * ring * np.exp(-t / decay)
    return out


def dog(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Barks: short harmonic bursts (250-600 Hz, falling) with a fast attack and a noisy, harsh tail."""
    out = np.zeros(n, F32)
    bark = min(n, int(rng.uniform(0.08, 0.25) * sr))
    starts = np.arange(0, n - bark + 1, int(bark * rng.uniform(1.2, 2.0)))[:3]
    t = _time(bark, sr)
    envelope = (np.minimum(t / 0.005, 1) * np.exp(-t / (t[-1] / 3))).astype(F32)
    for start in starts:
        f0 = rng.uniform(250, 600) * (1 - 0.2 * t / t[-1])
        voiced = _harmonic(_phase(f0, sr, rng), 1 / np.arange(1, 13), f0.max(), sr)
        rough = F32(0.3 * rms(voiced)) * _band_noise(rng, bark, sr, 500, 3000)
        out[start : start + bark] += (voiced + rough) * envelope
    return out


def shaver(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A buzzing sawtooth (90-260 Hz: shavers low, toothbrushes high), slightly modulated by the hand's motion."""
    t = _time(n, sr)
    f0 = rng.uniform(90, 260) * (1 + 0.01 * _sin(2 * np.pi * rng.uniform(3, 7) * t))
    saw = _phase(f0, sr, rng) / F32(np.pi) - 1
    motion = 1 + 0.3 * _sin(2 * np.pi * rng.uniform(1, 3) * t)
    return saw * motion * _attack_release(n, sr, 0.05, 0.05)


def frying(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Sizzle: a steady high hiss (3 kHz up) plus sparse random crackles, each a few ms of decaying noise."""
    hiss = F32(0.3) * _band_noise(rng, n, sr, 3000, 7500)
    length = max(2, int(0.003 * sr))
    count = rng.poisson(rng.uniform(30, 120) * n / sr)
    starts = rng.integers(0, max(1, n - length), count)
    bursts = rng.standard_normal((count, length)) * np.exp(-np.arange(length) / (0.001 * sr))
    bursts *= rng.exponential(1.0, (count, 1))
    crackles = np.bincount((starts[:, None] + np.arange(length)).ravel(), bursts.ravel(), minlength=n)[:n]
    crackles = np.diff(crackles, prepend=0.0).astype(
        F32
    )  # first difference: tilts the crackles up in frequency
    return hiss + crackles / F32(max(rms(crackles), 1e-12)) * _attack_release(n, sr, 0.2, 0.2)


def running_water(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A stream: noise in a low-mid band (0.3-3 kHz) with a fast, random, bubbling amplitude modulation."""
    low = rng.uniform(300, 700)
    flow = _band_noise(rng, n, sr, low, low * rng.uniform(3, 5))
    cutoff = rng.uniform(15, 40)
    # The modulator is slow: synthesize it at a 200 Hz control rate and hold each value for 5 ms.
    hold = max(1, sr // 200)
    control = _shaped_noise(rng, -(-n // hold), sr // hold, lambda f: _lowpass(f, cutoff))
    bubbling = np.exp(F32(0.6) * np.repeat(control, hold)[:n])
    return flow * bubbling * _attack_release(n, sr, 0.2, 0.2)


_VOWELS = np.array(  # formants F1, F2, F3 (Hz) of a few vowels
    [
        [730, 1090, 2440],
        [270, 2290, 3010],
        [530, 1840, 2480],
        [570, 840, 2410],
        [300, 870, 2240],
        [660, 1720, 2410],
    ]
)


def speech(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Voiced speech: a harmonic source with intonation, shaped syllable by syllable (3-6 Hz) by the formants of a
    random vowel, with pauses and a little fricative noise."""
    t = _time(n, sr)
    base = rng.uniform(90, 240)
    f0 = base * (
        1 + 0.1 * _sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6.3)) - 0.1 * t / t[-1]
    )
    source = _harmonic(_phase(f0, sr, rng), 1 / np.sqrt(np.arange(1, 80)), float(f0.max()), sr)
    syllable = max(16, int(sr / rng.uniform(3, 6)))
    voiced, gate = np.zeros(n, F32), np.zeros(n, F32)
    for start in range(0, n, syllable):
        segment = source[start : start + syllable]
        if rng.random() < 0.15:
            continue  # a pause
        formants = _VOWELS[rng.integers(len(_VOWELS))] * rng.uniform(0.9, 1.15)
        freqs = np.fft.rfftfreq(segment.size, 1 / sr)
        response = 0.02 + sum(
            g * np.exp(-(((freqs - f) / w) ** 2))
            for g, f, w in zip((1.0, 0.6, 0.3), formants, (120, 160, 200), strict=True)
        )
        # The filtering is circular, but the gate is zero at both ends of the syllable, which hides the wrap.
        gate[start : start + segment.size] = np.sin(np.pi * np.arange(segment.size) / segment.size) ** 0.6
        voiced[start : start + segment.size] = np.fft.irfft(np.fft.rfft(segment) * response, segment.size)
    fricative = F32(0.1 * rms(voiced)) * _band_noise(rng, n, sr, 2500, 6000)
    return (voiced + fricative) * gate


def vacuum(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A vacuum cleaner: steady broadband noise tilted toward the lows, a low motor hum (90-160 Hz) and a faint
    turbine whine (1.2-2.5 kHz)."""
    t = _time(n, sr)
    cutoff = rng.uniform(2000, 5000)
    noise = _shaped_noise(rng, n, sr, lambda f: _power_law(f / 100, -0.3) * _lowpass(f, cutoff))
    f0 = rng.uniform(90, 160)
    hum = _harmonic(_phase(np.full(n, f0), sr, rng), [1.0, 0.5, 0.3, 0.2, 0.1], f0, sr)
    whine = np.sin(_phase(rng.uniform(1200, 2500) * (1 + 0.005 * _sin(np.pi * t)), sr, rng))
    return (noise + F32(0.4) * hum + F32(0.15) * whine) * _attack_release(n, sr, 0.3, 0.3)


GENERATORS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "Alarm_bell_ringing": alarm,
    "Blender": blender,
    "Cat": cat,
    "Dishes": dishes,
    "Dog": dog,
    "Electric_shaver_toothbrush": shaver,
    "Frying": frying,
    "Running_water": running_water,
    "Speech": speech,
    "Vacuum_cleaner": vacuum,
}
