"""Makes the rules test kit importable as `rules_kit` (pytest runs with --import-mode=importlib)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "rules_kit" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("rules_kit", Path(__file__).with_name("rules_kit.py"))
    sys.modules["rules_kit"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["rules_kit"])
