"""liblsl's own log: warnings and errors only, unless the lab's LSL configuration says otherwise.

liblsl writes an ``INFO| Loaded default config`` line (and other INFO lines) to stderr the first
time it is used. closedloop sets liblsl's log level to warnings before that first use, through
liblsl's configuration content, but only when no ``lsl_api.cfg`` of the lab's is in force: that
file (networking, clock settings and its own ``[log] level``) always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

import pylsl

LOG_LEVEL = -1  # liblsl (loguru) verbosity: -2 errors, -1 warnings, 0 info


def lab_config_files() -> list[Path]:
    """The ``lsl_api.cfg`` files liblsl reads, in the order it looks for them."""
    named = [Path(os.environ["LSLAPICFG"])] if os.environ.get("LSLAPICFG") else []
    return named + [Path("lsl_api.cfg"), Path.home() / "lsl_api" / "lsl_api.cfg", Path("/etc/lsl_api/lsl_api.cfg")]


def quiet_liblsl() -> None:
    """Log liblsl's warnings and errors only, unless a lab configuration file is in force.

    Takes effect only before liblsl's first use in this process (liblsl reads its configuration once).
    """
    if not any(path.is_file() for path in lab_config_files()):
        pylsl.set_config_content(f"[log]\nlevel = {LOG_LEVEL}\n")
