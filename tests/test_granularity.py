"""Granularity gop: an INR per GoP, adapters per GoP or shared, GoPs trained as separate jobs.

Real tiny-backbone encodes of a 9-frame clip cut into two GoPs (5 + 4 padded to 5): decoded in
another process, decoded GoP by GoP, compared with a 1-GoP sequence encode (which must give the
same tensors) and with the second GoP encoded on its own (which must too, since GoPs train
independently), trained through submitit's local launcher, and resumed after a failed GoP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from divinr.cli import main as cli_main
from divinr.codec import DiVINRCodec, decompress, load_clip
from divinr.compression.bitstream import (
    SCHEMA_V4,
    SCHEMAS,
    Granularity,
    bits_breakdown,
    pack_sections,
    read_header_schema,
    unpack,
)
from divinr.compression.container import read_container, write_container
from divinr.data.gop import gop_coordinates, latent_coordinates, plan_gops
from divinr.data.samples import sample_clip_path
from divinr.errors import BitstreamError, DivinrError, PresetError
from divinr.inference.sampler import SamplerConfig
from divinr.models.nola import NOLAConfig
from divinr.training.encoder import EncoderConfig
from divinr.training.gop_jobs import PART_NAME, GoPLauncher, GoPPart, assembled_header
from divinr.training.stages import paper_phases

FRAMES, GOP = 9, 5


def config(**changes: object) -> EncoderConfig:
    base = EncoderConfig(
        inr="xxs", phases=paper_phases(2, 1, 1), nola=NOLAConfig(rank=8, num_bases=16),
        sampler=SamplerConfig(steps=3, noise_seed=7), gop_size=GOP, device="cpu", granularity="gop",
    )  # fmt: skip
    return replace(base, **changes)


@pytest.fixture(scope="module")
def clip():
    return load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=FRAMES)


@pytest.fixture(scope="module")
def streams(clip, tmp_path_factory):
    """Two-GoP streams with an INR per GoP and adapters per GoP or for the sequence (by scope),
    with their reconstructions, each encoded once."""
    cache = {}

    def encode(scope: str):
        if scope not in cache:
            codec = DiVINRCodec(config(nola_scope=scope), progress=False)
            cache[scope] = codec.encode(clip, reconstruct=True, workdir=tmp_path_factory.mktemp("work"))
        return cache[scope]

    return encode


@pytest.fixture(scope="module", params=["gop", "sequence"], ids=["per-gop-adapters", "shared-adapters"])
def encoded(request, streams):
    return request.param, streams(request.param)


@pytest.fixture(scope="module")
def per_gop(streams):
    """The stream with an INR and adapters per GoP."""
    return streams("gop")


# -- settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"granularity": "frame"}, "granularity must be 'sequence' or 'gop'"),
        ({"nola_scope": "video"}, "nola_scope must be 'sequence' or 'gop'"),
        ({"granularity": "sequence", "nola_scope": "gop"}, "nola_scope='gop' needs granularity='gop'"),
        ({"conditioning": "jpeg"}, "conditioning='jpeg' has none"),
    ],
)
def test_settings_the_format_cannot_carry_are_refused(changes, message) -> None:
    with pytest.raises(PresetError, match=message):
        config(**changes)


def test_the_adapter_scope_defaults_to_the_granularity() -> None:
    assert config().adapter_scope == "gop" and config(granularity="sequence").adapter_scope == "sequence"
    assert config(nola_scope="sequence").adapter_scope == "sequence"


@pytest.mark.parametrize(("kind", "workers"), [("ssh", 1), ("local", 0)])
def test_bad_launchers_are_refused(kind: str, workers: int) -> None:
    with pytest.raises(PresetError, match="GoP launcher must be one of|GoP workers must be"):
        GoPLauncher(kind, workers)


def test_per_gop_coordinates_span_each_gop_alone() -> None:
    spans = plan_gops(11, 5)  # latent frames 2, 2, 1
    assert [c.tolist() for c in gop_coordinates(spans, per_gop=True)] == [[0.0, 1.0], [0.0, 1.0], [0.0]]
    assert all(torch.equal(a, b) for a, b in zip(gop_coordinates(spans), latent_coordinates(spans)))


# -- the stream ------------------------------------------------------------------------------------
def test_the_stream_has_one_section_per_gop_and_a_v4_header(encoded) -> None:
    scope, result = encoded
    schema, values = read_header_schema(result.data)
    assert schema.version == 4 and values["granularity"] == Granularity.GOP == 1
    assert values["nola_scope"] == (Granularity.GOP if scope == "gop" else Granularity.SEQUENCE)
    names = [name for name, _ in read_container(result.data, SCHEMAS)[2]]
    assert names == ["inr.0", "inr.1", *(["nola.0", "nola.1"] if scope == "gop" else ["nola"])]
    stream = unpack(result.data)
    assert len(stream.inr_sections) == 2 and stream.inr_sections[0] != stream.inr_sections[1]
    bits = bits_breakdown(result.data)
    assert bits["header"] + bits["inr"] + bits["adapter"] == bits["total"] == 8 * len(result.data)
    assert bits == result.bits


def test_a_missing_gop_section_is_refused_before_decoding(encoded) -> None:
    _, result = encoded
    _, values, sections = read_container(result.data, SCHEMAS)
    dropped = write_container(SCHEMA_V4, values, [s for s in sections if s[0] != "inr.1"], version=4)
    with pytest.raises(BitstreamError, match=r"implies \['inr.0', 'inr.1'"):
        unpack(dropped)
    with pytest.raises(ValueError, match="implies 2 INR"):
        pack_sections(unpack(result.data).header, [sections[0][1]], [s for n, s in sections if n.startswith("nola")])


DECODE = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from divinr.codec import decompress
    decoded = decompress(open(sys.argv[1], "rb").read(), device="cpu", progress=False)
    torch.save(decoded.frames, sys.argv[2])
    """
)


def test_another_process_decodes_the_encoders_reconstruction_exactly(encoded, tmp_path: Path) -> None:
    _, result = encoded
    stream, frames = tmp_path / "s.dvr", tmp_path / "f.pt"
    stream.write_bytes(result.data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", DECODE, str(stream), str(frames)], check=True, env=env, timeout=300)
    decoded = torch.load(frames, weights_only=True)
    assert decoded.shape == (FRAMES, 3, 64, 64) and torch.equal(decoded, result.reconstruction.frames)


@pytest.mark.parametrize("frames", [(5, 9), (6, 8), (0, 3)])
def test_random_access_decodes_a_gop_as_the_full_decode_does(encoded, frames) -> None:
    """Per-GoP adapters are merged GoP by GoP onto W0 restored exactly: GoP 1 alone, or after
    GoP 0, gives the same frames."""
    _, result = encoded
    part = decompress(result.data, frames=frames, device="cpu", progress=False).frames
    assert torch.equal(part, result.reconstruction.frames[frames[0] : frames[1]])
    chunks = list(DiVINRCodec(device="cpu", progress=False).iter_frames(result.data))
    assert torch.equal(torch.cat(chunks), result.reconstruction.frames)


def test_the_gops_have_their_own_adapters(encoded) -> None:
    scope, result = encoded
    stream = unpack(result.data)
    assert len(stream.adapter_sections) == (2 if scope == "gop" else 1)
    if scope == "gop":
        assert stream.adapter_sections[0] != stream.adapter_sections[1]


# -- what a per-GoP training is --------------------------------------------------------------------
def sections(data: bytes) -> list[bytes]:
    return [payload for _, payload in read_container(data, SCHEMAS)[2]]


def test_one_gop_coded_per_gop_is_the_sequence_codec_with_other_section_names(clip) -> None:
    """With a single GoP, the per-GoP job path and the sequence module train the same tensors."""
    one = replace(clip, frames=clip.frames[:GOP])
    per_gop = DiVINRCodec(config(), progress=False).encode(one, reconstruct=True)
    sequence = DiVINRCodec(config(granularity="sequence"), progress=False).encode(one, reconstruct=True)
    assert sections(per_gop.data) == sections(sequence.data)
    assert torch.equal(per_gop.reconstruction.frames, sequence.reconstruction.frames)


def test_a_gop_trains_as_it_would_alone(clip, per_gop) -> None:
    """Per-GoP models are independent: the second GoP's sections are those of its frames coded alone."""
    alone = DiVINRCodec(config(), progress=False).encode(replace(clip, frames=clip.frames[GOP:]))
    inr, nola = sections(alone.data)
    stream = unpack(per_gop.data)
    assert (stream.inr_sections[1], stream.adapter_sections[1]) == (inr, nola)


class Trainings(L.Callback):
    """Counts trainings started; raises on the ``crash_on``-th."""

    def __init__(self, crash_on: int | None = None) -> None:
        self.started = 0
        self.crash_on = crash_on

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started += 1
        if self.started == self.crash_on:
            raise RuntimeError("node lost")


def test_a_failed_gop_keeps_the_finished_ones_and_a_rerun_trains_only_it(clip, per_gop, tmp_path: Path) -> None:
    codec = DiVINRCodec(config(), progress=False)
    with pytest.raises(RuntimeError, match="node lost"):
        codec.encode(clip, workdir=tmp_path, callbacks=[Trainings(crash_on=2)])
    assert (tmp_path / "gop-0000" / PART_NAME).is_file() and not (tmp_path / "gop-0001" / PART_NAME).exists()
    rerun = Trainings()
    again = codec.encode(clip, workdir=tmp_path, callbacks=[rerun])
    assert rerun.started == 1 and again.data == per_gop.data
    untouched = Trainings()
    assert codec.encode(clip, workdir=tmp_path, callbacks=[untouched]).data == per_gop.data and untouched.started == 0
    other = Trainings()  # another seed: every part is stale
    DiVINRCodec(config(seed=1), progress=False).encode(clip, workdir=tmp_path, callbacks=[other])
    assert other.started == 2


def test_two_local_workers_give_the_inline_stream(clip, per_gop, tmp_path: Path) -> None:
    """The GoPs trained by two submitit processes, one thread each as here, assemble to the same bytes."""
    launcher = GoPLauncher("local", workers=2, timeout_min=10, threads=1)
    parallel = DiVINRCodec(config(), progress=False, launcher=launcher).encode(clip, workdir=tmp_path)
    assert parallel.data == per_gop.data
    assert sorted(p.name for p in tmp_path.glob("gop-*/" + PART_NAME) if p.is_file()) == [PART_NAME] * 2
    assert {row["gop"] for row in parallel.history} == {0, 1}


def test_parts_trained_on_other_weights_are_not_assembled(per_gop) -> None:
    header = unpack(per_gop.data).header
    parts = [GoPPart(g, b"", b"", bytes([g]) * 16, 13, [], 0.0) for g in range(2)]
    with pytest.raises(DivinrError, match="different backbone weights"):
        assembled_header(header, parts)


def test_slurm_jobs_need_a_shared_work_folder(clip) -> None:
    with pytest.raises(PresetError, match="work folder the nodes share"):
        DiVINRCodec(config(), progress=False, launcher=GoPLauncher("slurm", 0)).encode(clip)


# -- the command line ------------------------------------------------------------------------------
def test_the_cli_encodes_per_gop_and_info_says_so(tmp_path: Path, capsys) -> None:
    clip = tmp_path / "clip.y4m"
    from divinr.data.video import write_video

    write_video(clip, load_clip(sample_clip_path("bikes"), width=32, height=32, max_frames=FRAMES).frames, 25.0)
    out = tmp_path / "s.dvr"
    argv = ["encode", str(clip), "-o", str(out), "--backbone", "tiny", "--resolution", "32x32", "--epochs", "1,1,1",
            "--steps", "2", "--gop", "5", "--nola-bases", "8", "--granularity", "gop", "--device", "cpu"]  # fmt: skip
    assert cli_main(argv) == 0
    capsys.readouterr()
    assert cli_main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["granularity"], info["nola_scope"], info["format_version"]) == ("gop", "gop", 4)
    assert cli_main(["info", str(out)]) == 0
    assert "(an INR and adapters per GoP)" in capsys.readouterr().out
    assert cli_main([*argv[:-4], "--granularity", "frame", "--device", "cpu"]) == 2
    assert "--granularity frame: expected sequence or gop" in capsys.readouterr().err


# -- Hydra -----------------------------------------------------------------------------------------
def test_hydra_sets_the_granularity_and_where_gop_jobs_run() -> None:
    from hydra import compose, initialize_config_dir

    from experiments.points import changed_settings
    from experiments.run import encoder_config, launcher_of
    from experiments.schema import register_configs

    register_configs()
    conf = str(Path(__file__).resolve().parent.parent / "experiments" / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", ["granularity=gop", "nola_scope=sequence", "gop_jobs.kind=local", "gop_jobs.workers=2"])
        plain = compose("config")
    encoder = encoder_config(cfg)
    assert (encoder.granularity, encoder.adapter_scope) == ("gop", "sequence")
    assert launcher_of(cfg) == GoPLauncher("local", 2)
    assert (encoder_config(plain).granularity, encoder_config(plain).adapter_scope) == ("sequence", "sequence")
    # where GoPs train never changes a stream: a finished point stays finished
    from omegaconf import OmegaConf

    moved = OmegaConf.merge(cfg, {"gop_jobs": {"kind": "slurm", "workers": 0}})
    stored, current = (OmegaConf.to_container(c, resolve=True) for c in (cfg, moved))
    assert changed_settings(stored, current) == []
    assert changed_settings(stored, OmegaConf.to_container(plain, resolve=True)) == ["granularity", "nola_scope"]


class FakeSlurm:
    """Stands in for submitit's Slurm executor (no cluster here): records what it is given and runs
    each array task in this process, as a node would."""

    made: list[FakeSlurm] = []

    def __init__(self, folder: Path, cluster: str) -> None:
        self.folder, self.cluster, self.parameters, self.tasks = folder, cluster, {}, []
        FakeSlurm.made.append(self)

    def update_parameters(self, **parameters: object) -> None:
        self.parameters.update(parameters)

    def map_array(self, fn, arguments):
        self.tasks = [[job.index for job in jobs] for jobs in arguments]
        return [SimpleNamespace(job_id=f"1_{i}", result=lambda jobs=jobs: fn(jobs)) for i, jobs in enumerate(arguments)]


def test_slurm_gets_one_array_task_per_unfinished_gop(clip, per_gop, tmp_path: Path, monkeypatch) -> None:
    import submitit

    monkeypatch.setattr(submitit, "AutoExecutor", FakeSlurm)
    slurm = {"slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 720}
    codec = DiVINRCodec(config(), progress=False, launcher=GoPLauncher("slurm", workers=8, slurm=slurm))
    assert codec.encode(clip, workdir=tmp_path).data == per_gop.data
    (tmp_path / "gop-0001" / PART_NAME).unlink()
    assert codec.encode(clip, workdir=tmp_path).data == per_gop.data
    first, second = FakeSlurm.made[-2:]
    assert (first.cluster, first.folder, first.tasks, second.tasks) == ("slurm", tmp_path / "jobs", [[0], [1]], [[1]])
    assert first.parameters == {**slurm, "slurm_array_parallelism": 8}


# -- hostile per-GoP streams -----------------------------------------------------------------------
def rewritten(data: bytes, sections: list[tuple[str, bytes]], **fields: object) -> bytes:
    _, values, _ = read_container(data, SCHEMAS)
    return write_container(SCHEMA_V4, {**values, **fields}, sections, version=4)


def test_a_range_decode_reads_only_its_gops_sections(per_gop) -> None:
    """A damaged section of GoP 0 fails the GoPs that need it, not a decode of GoP 1."""
    sections = read_container(per_gop.data, SCHEMAS)[2]
    damaged = rewritten(per_gop.data, [(n, b"\x07" if n in ("inr.0", "nola.0") else p) for n, p in sections])
    part = decompress(damaged, frames=(5, 9), device="cpu", progress=False).frames
    assert torch.equal(part, per_gop.reconstruction.frames[5:9])
    with pytest.raises(BitstreamError, match="unknown section coding 7"):
        decompress(damaged, device="cpu", progress=False)


def test_a_stream_declaring_too_many_gop_inrs_is_refused_before_any_work(per_gop) -> None:
    """Each INR is under the per-INR limit, but thousands of GoPs would not be: the limit counts all."""
    sections = dict(read_container(per_gop.data, SCHEMAS)[2])
    gops = 2_000
    many = [(f"inr.{g}", sections["inr.0"]) for g in range(gops)] + [(f"nola.{g}", sections["nola.0"]) for g in range(gops)]
    with pytest.raises(BitstreamError, match=r"2000 INR\(s\) of [\d,]+ parameters, over 64,000,000 in all"):
        decompress(rewritten(per_gop.data, many, frames=gops * GOP), device="cpu", progress=False)


# -- the committed measurement (benchmarks.granularity on mini) -----------------------------------
MEASURED = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "granularity-mini" / "runs"
SCOPES = {"granularity_sequence": ("sequence", "sequence"), "granularity_gop_shared": ("gop", "sequence"),
          "granularity_gop": ("gop", "gop"), "granularity_gop_2workers": ("gop", "gop")}  # fmt: skip


def test_the_committed_points_are_their_streams_at_their_targets() -> None:
    """Every committed point's bpp is its file's, its header has its curve's granularity, it lands
    within 15% of its target, today's rate search still picks what was coded, and two local
    workers (one thread each) coded the stream one worker (two threads) did, up to the rounding of
    the training: same header and section sizes."""
    from divinr.rate import bits_per_pixel
    from divinr.rate_control import adapter_shapes, size_for_target
    from divinr.results import read_result

    points = sorted(MEASURED.glob("*/clip/*/*/results.json"))
    assert {p.parts[-5] for p in points} == set(SCOPES) and len(points) >= 12
    for path in points:
        result = read_result(path)
        data = (path.parent / result.bitstream).read_bytes()
        assert result.bpp == bits_per_pixel(len(data), result.frames, result.width, result.height)
        header = unpack(data).header
        granularity, scope = SCOPES[path.parts[-5]]
        assert (header.granularity.name.lower(), header.nola_scope.name.lower()) == (granularity, scope)
        assert len(unpack(data).inr_sections) == (2 if granularity == "gop" else 1)
        target = float(result.rate_point.removeprefix("bpp"))
        assert abs(result.bpp / target - 1) < 0.15, path
        assert size_for_target(target, header, adapter_shapes(header)).config == header.inr
    one, two = (
        (MEASURED / exp / "clip" / "bikes" / "bpp0.13" / "stream.dvr").read_bytes()
        for exp in ("granularity_gop", "granularity_gop_2workers")
    )
    assert unpack(one).header == unpack(two).header and bits_breakdown(one) == bits_breakdown(two)


def test_a_logger_gets_every_gops_training_curves(clip, per_gop, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="")
    again = DiVINRCodec(config(), progress=False).encode(clip, logger=logger)
    assert again.data == per_gop.data
    import csv

    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    epochs = len(again.history) // 2
    for gop in (0, 1):
        losses = [float(r[f"gop{gop}/train/loss"]) for r in rows if r.get(f"gop{gop}/train/loss")]
        assert losses == [row["train/loss"] for row in again.history if row["gop"] == gop] and len(losses) == epochs
    assert [int(r["step"]) for r in rows] == list(range(2 * epochs))
