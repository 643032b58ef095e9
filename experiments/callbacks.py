"""End-of-sweep reporting: a results table, RD figures and (with logger=wandb) one W&B RD run.

    on_multirun_end --load_results(results_root/exp_name)--> [RunResult]
                    --summary_table--> stdout
                    --plot_rd_curves--> results_root/exp_name/rd/rd_<dataset>.png|pdf
                    --log_rd_to_wandb--> W&B run "<exp_name>-rd" (offline without an API key)

Reporting runs after every point has finished and written its results file; a problem here
is a warning, never a failed sweep.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from divinr.results import RunResult, load_results

log = logging.getLogger(__name__)

RD_DIR = "rd"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(results: list[RunResult]) -> str:
    """A fixed-width table of points: rate, bits by part, PSNR, MS-SSIM, timings.

    Args:
        results: run results (failed ones show their error instead of numbers).

    Returns:
        The table as text, one header line and one line per result.
    """
    head = (
        f"{'point':<36} {'bpp':>9} {'header':>8} {'inr':>10} {'keyframes':>10} {'adapter':>9} {'psnr':>6} {'ms_ssim':>7} "
        f"{'enc s':>7} {'dec s':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        name = f"{r.dataset}/{r.sequence}/{r.codec}/{r.rate_point}"
        if r.status != "ok":
            lines.append(f"{name:<36} failed: {r.error}")
            continue
        bits = r.bits
        lines.append(
            f"{name:<36} {_number(r.bpp, 6):>9} {bits.get('header', 0):>8,} {bits.get('inr', 0):>10,} "
            f"{bits.get('keyframes', 0):>10,} {bits.get('adapter', 0):>9,} {_number(r.metrics.get('psnr'), 2):>6} "
            f"{_number(r.metrics.get('ms_ssim'), 4):>7} {_number(r.encode_seconds, 1):>7} "
            f"{_number(r.decode_seconds, 1):>6}"
        )
    skipped = sorted({m for r in results for m in r.skipped_metrics})
    if skipped:
        lines.append(f"not computed: {', '.join(skipped)} (weights missing; see skipped_metrics in results.json)")
    return "\n".join(lines)


def write_rd_report(config: DictConfig, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Table, figures and W&B logging for every result under ``results_root/exp_name``.

    Args:
        config: the sweep's composed config (``results_root``, ``exp_name``, ``logger``).
        formats: figure formats.

    Returns:
        The figure files written (none when there are no results).
    """
    from divinr.reporting import plot_rd_curves

    root = Path(to_absolute_path(config.results_root)) / config.exp_name
    results = load_results(root) if root.is_dir() else []
    if not results:
        log.warning("no results under %s: nothing to plot", root)
        return []
    print(summary_table(results))
    figures = plot_rd_curves(results, root / RD_DIR, formats=formats)
    if config.logger.name == "wandb" and figures:
        from experiments.wandb_logging import log_rd_to_wandb, rd_run

        with rd_run(
            root, project=config.logger.project, entity=config.logger.entity, name=f"{config.exp_name}-rd",
            group=config.exp_name, job_type="rd-curves", mode=config.logger.mode, reinit="finish_previous",
        ) as run:
            if run is not None:
                log_rd_to_wandb(results, run)
    print(f"RD curves: {root / RD_DIR}" if figures else f"no RD curves: no successful point under {root}")
    return figures


class RDCurvesCallback(Callback):
    """Hydra callback: after a multirun, report the RD curves of the whole experiment.

    Args:
        formats: figure formats passed to ``divinr.reporting.plot_rd_curves``.
    """

    def __init__(self, formats: tuple[str, ...] | list[str] = ("png", "pdf")) -> None:
        self.formats = tuple(formats)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            write_rd_report(config, self.formats)
        except Exception as exc:  # noqa: BLE001 - the points are done; reporting must not fail the sweep
            warnings.warn(f"RD report failed ({type(exc).__name__}: {exc}); the results files are intact")
