"""liblsl's own log stays out of closedloop's output, unless the lab's configuration asks for it."""

from __future__ import annotations

import os
import subprocess
import sys

USE_LSL = "import closedloop, pylsl; pylsl.resolve_streams(0.05)"


def _stderr_of(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "LSLAPICFG"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=environment, check=True).stderr


def test_liblsl_writes_no_info_lines(tmp_path):
    assert "INFO|" in _stderr_of("import pylsl; pylsl.resolve_streams(0.05)")  # liblsl alone does
    assert _stderr_of(USE_LSL, HOME=str(tmp_path)) == ""


def test_the_labs_lsl_api_cfg_wins(tmp_path):
    config = tmp_path / "lsl_api.cfg"
    config.write_text("[log]\nlevel = 0\n")
    assert f"Configuration loaded from {config}" in _stderr_of(USE_LSL, LSLAPICFG=str(config))
