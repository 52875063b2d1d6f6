"""The worker process does not import the master's side: config validation and its models, the master,
the admin API. Checked in a fresh interpreter that does what a worker does at start: import
`pygateway.worker.main` and load every shipped plugin (the registry)."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT

PROBE = """
import sys
import pygateway.worker.main
from pygateway.plugin.registry import Registry
Registry([])
print(" ".join(sorted(m for m in sys.modules if m.startswith("pygateway"))))
"""

MASTER_ONLY = ("pygateway.config", "pygateway.master", "pygateway.admin", "pygateway.store", "pygateway.cli")


def test_a_worker_imports_neither_the_validator_nor_the_master():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = out.stdout.split()
    assert "pygateway.worker.main" in loaded and "pygateway.worker.compiled" in loaded
    assert "pygateway.builtin_plugins.traffic_split" in loaded  # the registry did load the shipped plugins
    wrong = [m for m in loaded if m.startswith(MASTER_ONLY)]
    assert not wrong, wrong
