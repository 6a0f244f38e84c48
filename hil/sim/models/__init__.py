"""hil.sim.models — the simulated modems' data tables, one module per model.

`MODELS` maps a model key (``"rm520n"``) to its `hil.sim.modem.ModemModel`.
To add a model, write ``<key>.py`` defining ``MODEL`` and list it here.
"""
from __future__ import annotations

from hil.sim.models import ec25, rm500q, rm520n, sim7600, sim8200
from hil.sim.modem import ModemModel

MODELS: dict[str, ModemModel] = {m.MODEL.key: m.MODEL for m in (rm500q, rm520n, ec25, sim7600, sim8200)}
