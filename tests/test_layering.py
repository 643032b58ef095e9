"""The decoders stand alone: decoding a stream needs neither Lightning nor the training code.

A decoder that imported the encoder's training stack would pull Lightning (and its start-up
cost and dependencies) into every ``divinr decode``, and would let decode-time behaviour depend
on training code. Checked in fresh interpreters, on the committed v1 streams of both kinds. The decoder also loads divinr's peft code
(``divinr.models.peft_adapters``) only for streams adapted with LoRA or VeRA (diffusers itself
imports peft whenever it is installed, so that module is what divinr controls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapter_streams import untrained_stream

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
    " 'training': sorted(m for m in sys.modules if m.startswith('divinr.training')),"
    " 'peft_adapters': 'divinr.models.peft_adapters' in sys.modules}\n"
)


def test_decoder_modules_import_neither_lightning_nor_training() -> None:
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in DECODER_MODULES)
    loaded = _fresh(code + _TRAINING_LOADED + "print(json.dumps(loaded))")
    assert loaded == {"lightning": False, "training": [], "peft_adapters": False}


def _decode_in_a_fresh_process(stream: Path, out: Path) -> dict:
    code = (
        "import sys\n"
        "from divinr.cli import main\n"
        "status = main(['decode', sys.argv[1], '-o', sys.argv[2], '--device', 'cpu'])\n"
        + _TRAINING_LOADED
        + "loaded['status'] = status\n"
        "print(json.dumps(loaded))\n"
    )
    return _fresh(code, str(stream), str(out))


@pytest.mark.parametrize("stream", ["divinr_v1.dvr", "pixel_inr_v1.dvr"])
def test_divinr_decode_runs_without_lightning(stream: str, tmp_path: Path) -> None:
    """``divinr decode`` really decodes (a y4m comes out) and never loads Lightning on the way."""
    out = tmp_path / "out.y4m"
    loaded = _decode_in_a_fresh_process(DATA / stream, out)
    assert loaded == {"lightning": False, "training": [], "peft_adapters": False, "status": 0}
    assert out.stat().st_size > 0 and out.read_bytes().startswith(b"YUV4MPEG2")


def test_a_lora_stream_loads_the_peft_code_and_still_no_training_code(tmp_path: Path) -> None:
    stream, out = tmp_path / "lora.dvr", tmp_path / "out.y4m"
    stream.write_bytes(untrained_stream("lora")[0])
    loaded = _decode_in_a_fresh_process(stream, out)
    assert loaded == {"lightning": False, "training": [], "peft_adapters": True, "status": 0}
    assert out.read_bytes().startswith(b"YUV4MPEG2")


def test_encoding_does_load_the_training_code() -> None:
    """The lazy imports are real: the encoder side brings the training stack in when it is used."""
    code = "import divinr.training.encoder\n" + _TRAINING_LOADED + "print(json.dumps(loaded))"
    loaded = _fresh(code)
    assert loaded["lightning"] and "divinr.training.encoder" in loaded["training"]
