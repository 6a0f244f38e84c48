"""Makes the uplink test rig importable as `uplink_support` (pytest runs with --import-mode=importlib)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "uplink_support" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("uplink_support", Path(__file__).with_name("uplink_support.py"))
    sys.modules["uplink_support"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["uplink_support"])
