"""Speech material and ITU-T P.862 scoring for the speech-quality bench.

  pesq_tool.py prepare OUTDIR   synthesize the test speech with espeak-ng and
                                write it as raw 16-bit little-endian mono PCM:
                                OUTDIR/<talker>.8k.raw and <talker>.48k.raw
  pesq_tool.py score REF DEG... print the P.862 narrowband MOS-LQO (P.862.1
                                mapping) of each 8 kHz raw DEG against REF,
                                one per line
  pesq_tool.py talkers          print the talkers' names, one per line

Run inside the bench's own virtual environment (numpy, scipy, pesq).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

# Harvard sentences (IEEE 1969), about 10 s per talker: P.862 wants 8-12 s
# of speech with pauses. Two lists, each read by a lower and a higher voice.
LIST_1 = (
    "The birch canoe slid on the smooth planks. "
    "Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well. "
    "These days a chicken leg is a rare dish."
)
LIST_2 = (
    "The boy was there when the sun rose. "
    "A rod is used to catch pink salmon. "
    "The source of the huge river is the clear spring. "
    "Kick the ball straight and follow through."
)
# espeak-ng voices and what they read.
TALKERS = {
    "male-us": ("en-us", LIST_1),
    "female-us": ("en-us+f3", LIST_1),
    "male-gb": ("en-gb-x-rp", LIST_2),
    "female-gb": ("en-gb-x-rp+f4", LIST_2),
}
# Active speech level of about -26 dBov (P.56's usual test level), as RMS
# over the samples above a silence floor.
TARGET_DBOV = -26.0


def level(x):
    active = x[np.abs(x) > 0.01]
    return 20 * np.log10(np.sqrt(np.mean(active**2)) + 1e-12)


def prepare(out):
    out.mkdir(parents=True, exist_ok=True)
    for name, (voice, text) in TALKERS.items():
        wav = out / f"{name}.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True
        )
        rate, data = wavfile.read(wav)
        x = data.astype(np.float64) / 32768.0
        x *= 10 ** ((TARGET_DBOV - level(x)) / 20)
        for target in (8000, 48000):
            y = resample_poly(x, target, rate)
            pcm = np.clip(np.round(y * 32767), -32768, 32767).astype("<i2")
            pcm.tofile(out / f"{name}.{target // 1000}k.raw")


def score(ref, degs):
    from pesq import pesq

    r = np.fromfile(ref, dtype="<i2").astype(np.float32)
    for deg in degs:
        d = np.fromfile(deg, dtype="<i2").astype(np.float32)
        print(f"{pesq(8000, r, d, 'nb'):.3f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]))
    elif len(sys.argv) == 2 and sys.argv[1] == "talkers":
        print("\n".join(TALKERS))
    elif len(sys.argv) >= 4 and sys.argv[1] == "score":
        score(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
