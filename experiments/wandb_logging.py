"""Everything that talks to Weights & Biases: the run mode, loggers, media and RD tables.

The library reports through pure functions (``divinr.reporting``: results in, curves, figures
and rows out); this module is the only place that knows W&B, and every entry point that logs
to it (``experiments.run``, the end-of-sweep callback, ``benchmarks.table1 --wandb``) comes here.

    wandb_mode ----------> "online" with a key, else "offline" (one notice per OfflineNotice)
    wandb_logger --------> the Lightning WandbLogger of one point
    log_media -----------> scalars, original|decoded frames and a short clip of one point
    rd_run / log_rd_to_wandb --> one run holding the RD table, per-dataset line plots and figures
    log_table1 ----------> Table 1 and its RD curves (benchmarks.table1 --wandb)

W&B problems never fail a run: the reporting functions turn them into warnings, and the
runner falls back to CSV when ``wandb_logger`` raises.
"""

from __future__ import annotations

import netrc
import os
import sys
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from divinr.data.datasets import dataset_title
from divinr.data.video import Video, write_video
from divinr.metrics.names import METRIC_LABELS, REPORTED_METRICS
from divinr.reporting import (
    ANCHOR_CODEC,
    POINT_COLUMNS,
    Curve,
    FidStats,
    RDWarning,
    codec_labels,
    plot_rd_curves,
    point_rows,
    rd_points,
)
from divinr.results import RunResult

if TYPE_CHECKING:
    from benchmarks.table1 import Table1

_WANDB_HOST = "https://api.wandb.ai"


class OfflineNotice:
    """Tells the user once that W&B logs offline; its owner (one job, one command) passes it on."""

    def __init__(self) -> None:
        self.shown = False

    def show(self, directory: str | Path | None) -> None:
        """Print the notice on stderr unless this object already did.

        Args:
            directory: the ``dir`` the run is created in (default ``$WANDB_DIR`` or the current folder).
        """
        if self.shown:
            return
        where = Path(directory or os.environ.get("WANDB_DIR") or os.getcwd()) / "wandb"
        print(f"W&B: no API key found, logging offline to {where}", file=sys.stderr)
        self.shown = True


def _has_api_key() -> bool:
    """Whether W&B would find credentials: its environment variables or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or _WANDB_HOST).netloc
    for candidate in candidates:
        path = Path(candidate).expanduser()
        try:
            entry = netrc.netrc(str(path)).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            continue
        if entry is not None and entry[2]:
            return True
    return False


def wandb_mode(directory: str | Path | None = None, notice: OfflineNotice | None = None) -> str:
    """The W&B mode a run should use: ``$WANDB_MODE`` if set, else online with a key, else offline.

    Without credentials an online ``wandb.init`` would prompt or fail; offline runs keep
    everything on disk for a later ``wandb sync``.

    Args:
        directory: the ``dir`` the run will be created in; used only for the notice.
        notice: shows the offline notice once however often it is passed; None shows it now.

    Returns:
        ``"online"``, ``"offline"``, or whatever ``$WANDB_MODE`` says (e.g. ``"disabled"``).
    """
    explicit = os.environ.get("WANDB_MODE", "").strip()
    if explicit:
        return explicit
    if _has_api_key():
        return "online"
    (notice or OfflineNotice()).show(directory)
    return "offline"


# ---------------------------------------------------------------------------- one point


def wandb_logger(cfg: DictConfig, run_dir: Path, title: str, notice: OfflineNotice | None = None) -> WandbLogger:
    """The point's Lightning W&B logger, its run already started so a W&B failure shows here, not mid-training.

    Args:
        cfg: the composed root config (``logger`` group: project, entity, mode).
        run_dir: the point's folder (the run is saved under it).
        title: the run's name.
        notice: the job's offline notice.
    """
    logger = WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, name=title, group=cfg.exp_name,
        job_type="encode", save_dir=str(run_dir), mode=cfg.logger.mode or wandb_mode(run_dir, notice),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    logger.experiment
    return logger


def _to_uint8(frames: torch.Tensor) -> Any:
    """(T, 3, H, W) in [0, 1] -> (T, H, W, 3) uint8 numpy, the layout image libraries take."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def log_media(
    experiment: Any, cfg: DictConfig, reference: Video, decoded: torch.Tensor, payload: dict[str, Any]
) -> None:
    """Send scalars, original|decoded frame pairs and a short decoded clip to a W&B run.

    ``wandb.Video`` needs moviepy to encode arrays, so the clip is written here (H.264 4:2:0,
    playable in browsers) and handed over as a file.
    """
    import wandb

    count = min(cfg.logger.sample_frames, reference.num_frames)
    picks = torch.linspace(0, reference.num_frames - 1, count).round().long().unique() if count > 0 else []
    for i in picks:
        pair = _to_uint8(torch.cat([reference.frames[i], decoded[i]], dim=-1)[None])[0]
        payload[f"samples/frame_{int(i):04d}"] = wandb.Image(pair, caption=f"frame {int(i)}: original | decoded")
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.logger.video_frames > 0:
            clip = Path(tmp) / "decoded.mp4"
            write_video(clip, decoded[: cfg.logger.video_frames], reference.fps, crf=18)
            payload["samples/decoded"] = wandb.Video(str(clip), format="mp4")
        experiment.log(payload)  # copies the media into the run before the folder goes away
    experiment.summary.update({k: v for k, v in payload.items() if not k.startswith("samples/")})


def finish_wandb(failed: bool) -> None:
    """End the active W&B run, if this process started one, with the job's exit code."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish(exit_code=1 if failed else 0)


# ---------------------------------------------------------------------------- RD curves


@contextmanager
def rd_run(directory: Path, notice: OfflineNotice | None = None, **init: Any) -> Iterator[Any]:
    """A W&B run for reporting (``wandb.init(**init)`` in ``directory``), finished on exit.

    Yields None, with a warning, when the package is missing or the run cannot start, so a
    report that is already on disk is never lost to W&B.
    """
    try:
        import wandb

        run = wandb.init(dir=str(directory), mode=init.pop("mode", None) or wandb_mode(directory, notice), **init)
    except Exception as exc:  # noqa: BLE001 - W&B must never cost the report already written
        warnings.warn(f"W&B run not started ({type(exc).__name__}: {exc}); nothing logged", RDWarning, stacklevel=3)
        yield None
        return
    try:
        yield run
    finally:
        run.finish()


def log_rd_to_wandb(
    results: Sequence[RunResult],
    run: Any = None,
    *,
    anchor: str = ANCHOR_CODEC,
    figure_dir: str | Path | None = None,
    prefix: str = "rd",
    fid_stats: FidStats | None = None,
) -> bool:
    """Log all RD points, per-dataset line plots and the RD figures to a W&B run.

    Logged keys: ``<prefix>/points`` (a ``wandb.Table`` with
    :data:`divinr.reporting.POINT_COLUMNS`, one row per ok result), ``<prefix>/<dataset>/<metric>``
    (``wandb.plot.line_series`` of the dataset averages, one line per codec) and
    ``<prefix>/<dataset>/figure`` (the PNG of :func:`divinr.reporting.plot_rd_curves`). W&B
    problems never propagate: they become a warning, so a sweep never dies in its reporting step.

    Args:
        results: run results.
        run: a ``wandb`` run; None uses the active ``wandb.run``.
        anchor: codec to highlight in the figures.
        figure_dir: where to write the PNGs (default: a temporary folder).
        prefix: key prefix.
        fid_stats: plot the pooled per-dataset FID instead of the mean FID (see ``rd_points``).

    Returns:
        True when something was logged; False when W&B is missing, no run is active, or
        logging failed.
    """
    try:
        import wandb
    except ImportError:
        warnings.warn("W&B logging skipped: the wandb package is not installed", RDWarning, stacklevel=2)
        return False
    run = run if run is not None else wandb.run
    if run is None:
        warnings.warn("W&B logging skipped: no active run; call wandb.init first", RDWarning, stacklevel=2)
        return False
    labels = codec_labels(results)
    try:
        table = wandb.Table(columns=list(POINT_COLUMNS), data=point_rows(results))
        payload: dict[str, Any] = {f"{prefix}/points": table}
        for metric in REPORTED_METRICS:
            by_dataset: dict[str, list[tuple[str, Curve]]] = defaultdict(list)
            for (dataset, codec), points in sorted(rd_points(results, metric, fid_stats).items()):
                by_dataset[dataset].append((codec, points))
            for dataset, lines in by_dataset.items():
                payload[f"{prefix}/{dataset}/{metric}"] = wandb.plot.line_series(
                    xs=[[p[0] for p in points] for _, points in lines],
                    ys=[[p[1] for p in points] for _, points in lines],
                    keys=[labels.get(codec, codec) for codec, _ in lines],
                    title=f"{dataset_title(dataset)}: {METRIC_LABELS.get(metric, metric)} vs bpp",
                    xname="bpp",
                )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(figure_dir) if figure_dir is not None else Path(tmp)
            for path in plot_rd_curves(results, folder, formats=("png",), anchor=anchor, fid_stats=fid_stats):
                payload[f"{prefix}/{path.stem.removeprefix('rd_')}/figure"] = wandb.Image(str(path))
            run.log(payload)  # copies the images into the run before the folder goes away
    except Exception as exc:  # noqa: BLE001 - any W&B failure must not end a sweep
        warnings.warn(f"W&B logging failed ({type(exc).__name__}: {exc}); results files are unaffected", RDWarning)
        return False
    return True


def log_table1(table: Table1, results: Sequence[RunResult], out_dir: Path, fid_stats: FidStats | None) -> None:
    """Log Table 1 and the RD curves behind it to a new W&B run in ``out_dir``; failures only warn."""
    config = {
        "anchor": table.anchor, "method": table.method, "fid": table.fid,
        "columns": {f"{c.dataset}/{c.metric}": c.method for c in table.columns.values()},
    }
    with rd_run(out_dir, project=os.environ.get("WANDB_PROJECT", "divinr"), job_type="table1", config=config) as run:
        if run is None:
            return
        import wandb

        cells = [(d, m) for d in table.datasets for m in table.metrics]
        rows = [[c] + [table.cells[(c, d, m)].value for d, m in cells] for c in table.codecs]
        columns = ["codec"] + [f"{d}/{m}" for d, m in cells]
        try:
            run.log({"table1": wandb.Table(columns=columns, data=rows)})
        except Exception as exc:  # noqa: BLE001 - the tables are on disk already
            warnings.warn(f"W&B logging failed ({type(exc).__name__}: {exc})", RDWarning, stacklevel=2)
            return
        log_rd_to_wandb(results, run, anchor=table.anchor, figure_dir=out_dir / "figures", fid_stats=fid_stats)
