"""The decoders stand alone: decoding a stream needs neither Lightning nor the training code.

A decoder that imported the encoder's training stack would pull Lightning (and its start-up
cost and dependencies) into every ``divinr decode``, and would let decode-time behaviour depend
on training code. Checked in fresh interpreters, on the committed v1 streams of both kinds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
DECODER_MODULES = ("divinr.inference.decoder", "divinr.inference.sampler", "divinr.codec", "divinr.codec.divinr",
                   "divinr.codec.pixel", "divinr.models.pixel_inr")


def _fresh(code: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, env=env, timeout=300, capture_output=True)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


_TRAINING_LOADED = (
    "import json, sys\n"
    "loaded = {'lightning': 'lightning' in sys.modules,"
    " 'training': sorted(m for m in sys.modules if m.startswith('divinr.training'))}\n"
)


def test_decoder_modules_import_neither_lightning_nor_training() -> None:
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in DECODER_MODULES)
    assert _fresh(code + _TRAINING_LOADED + "print(json.dumps(loaded))") == {"lightning": False, "training": []}


@pytest.mark.parametrize("stream", ["divinr_v1.dvr", "pixel_inr_v1.dvr"])
def test_divinr_decode_runs_without_lightning(stream: str, tmp_path: Path) -> None:
    """``divinr decode`` really decodes (a y4m comes out) and never loads Lightning on the way."""
    out = tmp_path / "out.y4m"
    code = (
        "import sys\n"
        "from divinr.cli import main\n"
        "status = main(['decode', sys.argv[1], '-o', sys.argv[2], '--device', 'cpu'])\n"
        + _TRAINING_LOADED
        + "loaded['status'] = status\n"
        "print(json.dumps(loaded))\n"
    )
    assert _fresh(code, str(DATA / stream), str(out)) == {"lightning": False, "training": [], "status": 0}
    assert out.stat().st_size > 0 and out.read_bytes().startswith(b"YUV4MPEG2")


def test_encoding_does_load_the_training_code() -> None:
    """The lazy imports are real: the encoder side brings the training stack in when it is used."""
    code = "import divinr.training.encoder\n" + _TRAINING_LOADED + "print(json.dumps(loaded))"
    loaded = _fresh(code)
    assert loaded["lightning"] and "divinr.training.encoder" in loaded["training"]
