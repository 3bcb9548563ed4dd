"""`prepare-desed --download`: fetch the real DESED recordings with the optional `desed` package."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from sedaug.errors import UserError, one_line


def download_desed(root: Path, jobs: int = 3) -> Path:
    """Download the real DESED recordings (weak, unlabeled, validation, public eval) with the `desed` package.

    The synthetic20 soundscapes are not part of this download: generate them with DESED's own scripts
    (desed.download_desed_soundbank + the DCASE 2020 jams) into audio/train/synthetic20/soundscapes.
    """
    try:
        import desed  # type: ignore[import-not-found]
    except ImportError as err:
        raise UserError(
            "downloading DESED needs the optional `desed` package: pip install 'sedaug[download]'"
        ) from err
    try:
        socket.create_connection(("zenodo.org", 443), timeout=10).close()
    except OSError as err:
        raise UserError(
            f"cannot reach zenodo.org ({one_line(err)}): download DESED on a machine with network access, "
            "then run `sedaug prepare-desed --root DIR`"
        ) from err
    root = Path(root)
    desed.download_real(str(root), n_jobs=jobs)
    # The desed package puts validation clips one folder deeper than the DCASE 2020 layout expects.
    nested = root / "audio" / "validation" / "validation"
    if nested.is_dir():
        for wav in nested.iterdir():
            shutil.move(str(wav), str(root / "audio" / "validation" / wav.name))
        nested.rmdir()
    return root
