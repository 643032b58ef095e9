"""The speed benchmark on CPU with the tiny backbone: report schema, ratios and decode equivalence."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import speed
from divinr.models.backbone import build_random_backbone, load_backbone
from divinr.models.nola import NOLAConfig, inject_nola, merge_nola, nola_layers

SMALL = ["--device", "cpu", "--backbone", "tiny", "--resolution", "64x64", "--gop", "5", "--steps", "2",
         "--repeats", "1", "--warmup", "0"]
STATS = {"median", "min", "max"}
DECODE_STAGES = {"inr", "sampling", "vae_decode"}


def assert_timing(result: dict) -> None:
    """A measurement with positive finite seconds, ordered min <= median <= max."""
    seconds = result["seconds"]
    assert set(seconds) == STATS
    assert all(math.isfinite(v) and v > 0 for v in seconds.values())
    assert seconds["min"] <= seconds["median"] <= seconds["max"]
    assert result["peak_memory_bytes"] is None  # not measured on CPU


def expected_basis_bytes(model: nn.Module, rank: int, num_bases: int) -> int:
    """Independent count: one float32 bank per distinct (r, in) and (out, r) shape of the adapted linears."""
    shapes = set()
    for layer in nola_layers(model).values():
        base = layer.base
        shapes |= {(rank, base.in_features), (base.out_features, rank)}
    return sum(num_bases * rows * cols * 4 for rows, cols in shapes)


@pytest.fixture(scope="module")
def baseline_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("speed") / "speed-cpu.json"
    report = speed.main([*SMALL, "--baseline", "--out", str(out)])
    return report, out


def test_report_has_every_documented_key(baseline_report: tuple[dict, Path]) -> None:
    report, out = baseline_report
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert not list(out.parent.glob(".*"))  # the atomic write left no temporary file
    for key in ("command", "date", "device", "versions", "backbone", "resolution", "gop", "latent_shape", "steps",
                "repeats", "warmup", "inr", "nola_coefficients", "nola_layers", "compile", "parts", "setup_seconds",
                "merge_seconds", "released_basis_bytes", "train", "decode", "nola", "speedups", "targets"):
        assert key in report, key
    assert report["command"].startswith("python -m benchmarks.speed --device cpu")
    assert report["device"]["type"] == "cpu"
    assert set(report["versions"]) >= {"torch", "diffusers"}
    assert report["resolution"] == [64, 64] and report["gop"] == 5 and report["steps"] == 2
    assert report["latent_shape"] == [16, 2, 8, 8]
    assert report["inr"]["preset"] == "s" and report["inr"]["params"] > 0

    assert set(report["train"]) == {"checkpointing", "no_checkpointing", "baseline_checkpointing"}
    for result in report["train"].values():
        assert_timing(result)
    assert set(report["decode"]) == {"baseline", "optimised"}
    for result in report["decode"].values():
        assert_timing(result)
        assert set(result["stages"]) == DECODE_STAGES
        stage_sum = sum(stage["median"] for stage in result["stages"].values())
        assert stage_sum <= result["seconds"]["median"] * (1 + 1e-9)
        assert result["frames"] == 5
        assert result["fps"]["median"] == pytest.approx(5 / result["seconds"]["median"])
        assert result["fps"]["min"] == pytest.approx(5 / result["seconds"]["max"])

    nola = report["nola"]
    for key in ("basis_generation", "factors_forward", "factors_forward_backward", "forward_unmerged",
                "forward_merged"):
        assert_timing(nola[key])
    model = build_random_backbone("tiny").transformer
    config = NOLAConfig()
    inject_nola(model, config)
    expected = expected_basis_bytes(model, config.rank, config.num_bases)
    assert nola["basis_bytes"] == nola["materialised_bytes"] == report["released_basis_bytes"] == expected
    assert nola["basis_bytes_bf16"] * 2 == expected
    assert math.isfinite(nola["unmerged_overhead"])
    assert report["nola_coefficients"] == report["nola_layers"] * 2 * config.num_bases

    assert set(report["speedups"]) == {"decode", "train"}
    assert all(math.isfinite(v) and v > 0 for v in report["speedups"].values())
    assert report["speedups"]["decode"] == pytest.approx(
        report["decode"]["baseline"]["seconds"]["median"] / report["decode"]["optimised"]["seconds"]["median"]
    )
    statuses = {t["name"]: t["status"] for t in report["targets"]}
    assert set(statuses) == {t.name for t in speed.TARGETS}
    assert statuses["decode_fps"] == statuses["train_s_per_iter"] == statuses["nola_basis_gb"] == "n/a on CPU"
    assert statuses["decode_peak_gb"] == "not measured"  # peak memory is a GPU figure


def test_without_baseline_no_ratios_and_only_selected_parts(tmp_path: Path) -> None:
    report = speed.main([*SMALL, "--parts", "decode", "--out", str(tmp_path / "r.json")])
    assert "speedups" not in report and "train" not in report and "nola" not in report
    assert set(report["decode"]) == {"optimised"}
    assert_timing(report["decode"]["optimised"])


def test_merged_decode_matches_unmerged_adapters() -> None:
    setup = speed.build_setup(build_random_backbone("tiny"), "xxs", (64, 64), 5, 2)
    layers = nola_layers(setup.module.transformer).values()
    unmerged = speed.decode_gop(setup)
    betas = [layer.nola_beta.detach().clone() for layer in layers]
    with torch.no_grad():
        for layer in layers:
            layer.nola_beta.zero_()
        without_adapters = speed.decode_gop(setup)
        for layer, beta in zip(layers, betas):
            layer.nola_beta.copy_(beta)
    merge_nola(setup.module.transformer)
    merged = speed.decode_gop(setup)
    # The adapters matter (so the comparison can fail), and merging them changes nothing.
    assert (unmerged - without_adapters).abs().max() > 1e-3
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)


def test_random_backbone_tiny_equals_load_backbone_and_keeps_global_rng() -> None:
    state = torch.random.get_rng_state()
    built = build_random_backbone("tiny")
    assert torch.equal(torch.random.get_rng_state(), state)
    loaded = load_backbone("tiny")
    for mine, theirs in ((built.transformer, loaded.transformer), (built.vae, loaded.vae)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = build_random_backbone("tiny", seed=1, dtype=torch.bfloat16)
    assert other.model_dtype == torch.bfloat16 and next(other.vae.parameters()).dtype == torch.float32
    key = "decoder.conv_in.weight"
    assert not torch.equal(other.vae.state_dict()[key], loaded.vae.state_dict()[key])
    assert not any(p.requires_grad for p in other.transformer.parameters())


def test_measure_counts_runs_and_splits_stages() -> None:
    calls = []

    def run(watch: speed.Stopwatch) -> None:
        calls.append(1)
        watch.stage("a")
        time.sleep(0.01)
        watch.stage("b")
        time.sleep(0.02)

    result = speed.measure(run, torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5
    assert result["stages"]["a"]["min"] >= 0.01 and result["stages"]["b"]["min"] >= 0.02
    assert result["seconds"]["min"] >= result["stages"]["a"]["min"] + result["stages"]["b"]["min"]


def test_targets_pass_and_fail_only_for_gpu_runs_at_paper_geometry() -> None:
    report = {
        "device": {"type": "cuda"}, "resolution": [1024, 576], "gop": 25, "steps": 20,
        "backbone": {"preset": "wan2.1-fun-1.3b-inp"},
        "decode": {"optimised": {"fps": {"median": 6.0}, "peak_memory_bytes": 13e9}},
        "train": {"checkpointing": {"seconds": {"median": 0.8}, "peak_memory_bytes": 20e9}},
        "nola": {"basis_bytes": 1.35e9},
    }
    status = {t["name"]: t["status"] for t in speed.check_targets(report)}
    assert status == {"decode_fps": "PASS", "train_s_per_iter": "PASS", "train_peak_gb_checkpointing": "PASS",
                      "decode_peak_gb": "FAIL", "nola_basis_gb": "PASS"}
    report["steps"] = 10
    status = {t["name"]: t["status"] for t in speed.check_targets(report)}
    assert status["decode_fps"].startswith("n/a") and status["train_s_per_iter"] == "PASS"
    report["device"]["type"] = "cpu"
    assert {t["status"] for t in speed.check_targets(report)} == {"n/a on CPU"}
