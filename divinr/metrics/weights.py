"""Local cache of the pretrained weights the perceptual metrics need.

Metric code never downloads: it asks :func:`require_weight` for a file and gets a path or a
:class:`~divinr.errors.MissingWeightsError` that names the file, where it is expected and how
to get it. Downloading is a separate, explicit step::

    python -m divinr.metrics.weights download      # fetch the missing files into the cache
    python -m divinr.metrics.weights list          # show what is present

Two kinds of entries:

- *cached*: large backbones fetched once from their official URLs into
  ``$DIVINR_WEIGHTS_DIR`` (default ``~/.cache/divinr/weights``). File names are the official
  ones, so a copy from torch hub's cache (``~/.cache/torch/hub/checkpoints``) can be dropped in.
- *shipped*: small heads that are part of an installed package (the LPIPS linear layers in
  ``lpips``, the DISTS alpha/beta in ``torchmetrics``); they are used from there.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from divinr.errors import EXIT_USER_ERROR, DivinrError, MissingWeightsError, unknown_choice

ENV_WEIGHTS_DIR = "DIVINR_WEIGHTS_DIR"
DOWNLOAD_COMMAND = "python -m divinr.metrics.weights download"


@dataclass(frozen=True)
class WeightFile:
    """One weight file the metrics need.

    Attributes:
        filename: file name (in the cache, or relative to ``package``'s install folder).
        description: what the file is, for messages.
        url: official download URL (cached entries only).
        sha256_prefix: leading hex digits of the file's SHA-256 where the publisher states them
            (torchvision puts them in the file name); None where no checksum is published.
        package: for shipped entries, the installed package that carries the file.
    """

    filename: str
    description: str
    url: str | None = None
    sha256_prefix: str | None = None
    package: str | None = None


WEIGHTS: dict[str, WeightFile] = {
    "alexnet": WeightFile(
        "alexnet-owt-7be5be79.pth",
        "torchvision AlexNet IMAGENET1K_V1, the LPIPS backbone",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        sha256_prefix="7be5be79",
    ),
    "vgg16": WeightFile(
        "vgg16-397923af.pth",
        "torchvision VGG16 IMAGENET1K_V1, the DISTS backbone",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256_prefix="397923af",
    ),
    "inception_fid": WeightFile(
        "weights-inception-2015-12-05-6726825d.pth",
        "FID Inception-v3 (TF 2015-12-05 graph) as torch-fidelity/torchmetrics load it",
        # torch-fidelity downloads it without a hash check, so no checksum is claimed here.
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
    ),
    "lpips_alex_v0.1": WeightFile(
        "weights/v0.1/alex.pth",
        "LPIPS v0.1 linear layers for AlexNet",
        package="lpips",
    ),
    "dists_alpha_beta": WeightFile(
        "functional/image/dists_models/weights.pt",
        "DISTS alpha/beta layer weights",
        package="torchmetrics",
    ),
}


def weights_dir() -> Path:
    """Folder of the cached weights: ``$DIVINR_WEIGHTS_DIR`` or ``~/.cache/divinr/weights``."""
    env = os.environ.get(ENV_WEIGHTS_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "divinr" / "weights"


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (torchmetrics is slow to import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def weight_path(name: str) -> Path:
    """Where the file of weight ``name`` is expected, whether or not it exists.

    Args:
        name: a key of :data:`WEIGHTS`.

    Returns:
        The expected path.
    """
    if name not in WEIGHTS:
        raise unknown_choice("metric weight", name, tuple(WEIGHTS))
    entry = WEIGHTS[name]
    if entry.package is None:
        return weights_dir() / entry.filename
    root = _package_dir(entry.package)
    base = root if root is not None else Path(f"<{entry.package} not installed>")
    return base / entry.filename


def require_weight(name: str) -> Path:
    """Path of weight ``name``; raises if it is not on disk (never downloads).

    Args:
        name: a key of :data:`WEIGHTS`.

    Returns:
        The path of the existing file.

    Raises:
        MissingWeightsError: the file is missing; the message names it, the expected path
            and the command (or package install) that provides it.
    """
    path = weight_path(name)
    if path.is_file():
        return path
    entry = WEIGHTS[name]
    if entry.package is not None:
        fix = f"reinstall the package: pip install --force-reinstall {entry.package}"
    else:
        fix = f"run `{DOWNLOAD_COMMAND}` or copy the file there (set {ENV_WEIGHTS_DIR} to use another folder)"
    raise MissingWeightsError(
        f"missing metric weights {Path(entry.filename).name!r} ({entry.description}) at {path}; {fix}"
    )


def missing_weights(names: tuple[str, ...] | None = None) -> list[str]:
    """Names (of ``names``, default all) whose files are not on disk."""
    return [n for n in (names or tuple(WEIGHTS)) if not weight_path(n).is_file()]


def download_weight(name: str, timeout: float = 10.0) -> Path:
    """Download cached weight ``name`` from its official URL into :func:`weights_dir`.

    The file is written next to its target and renamed only after the checksum (where one is
    published) matches, so an interrupted download never leaves a file that looks valid.

    Args:
        name: a key of :data:`WEIGHTS` with a URL.
        timeout: socket timeout in seconds, so an unreachable host fails instead of hanging.

    Returns:
        The path of the downloaded file.

    Raises:
        MissingWeightsError: the download failed or the checksum did not match.
    """
    entry = WEIGHTS[name]
    if entry.url is None:
        raise MissingWeightsError(f"{name!r} ships with the {entry.package} package and is not downloaded")
    target = weight_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as err:  # URLError, socket timeouts and HTTP errors are all OSErrors
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise MissingWeightsError(
            f"could not download {entry.filename} from {entry.url} ({reason}); "
            f"copy the file to {target} by hand"
        ) from None
    if entry.sha256_prefix and not digest.hexdigest().startswith(entry.sha256_prefix):
        partial.unlink(missing_ok=True)
        raise MissingWeightsError(
            f"checksum mismatch for {entry.filename} from {entry.url} "
            f"(sha256 {digest.hexdigest()[:12]}..., expected {entry.sha256_prefix}...); try again"
        )
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: ``list`` shows each weight file, ``download`` fetches the missing ones.

    Returns:
        0 when every requested file is present afterwards, 2 otherwise.
    """
    parser = argparse.ArgumentParser(prog="python -m divinr.metrics.weights", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show each weight file and whether it is present")
    dl = sub.add_parser("download", help="download the missing cached weights from their official URLs")
    dl.add_argument("names", nargs="*", help=f"weights to fetch (default: all of {', '.join(WEIGHTS)})")
    dl.add_argument("--timeout", type=float, default=10.0, help="socket timeout in seconds (default 10)")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name in WEIGHTS:
            path = weight_path(name)
            print(f"{name:18s} {'present' if path.is_file() else 'MISSING':8s} {path}")
        return 0 if not missing_weights() else EXIT_USER_ERROR

    failures = 0
    for name in args.names or list(WEIGHTS):
        try:
            if name not in WEIGHTS:
                raise unknown_choice("metric weight", name, tuple(WEIGHTS))
            if weight_path(name).is_file():
                print(f"present: {weight_path(name)}")
            elif WEIGHTS[name].url is None:
                require_weight(name)  # raises with the reinstall hint
            else:
                print(f"downloaded: {download_weight(name, timeout=args.timeout)}")
        except DivinrError as err:
            failures += 1
            print(f"error: {err}", file=sys.stderr)
    return EXIT_USER_ERROR if failures else 0


if __name__ == "__main__":
    sys.exit(main())
