"""hil.sim.models — the simulated modems' data tables, one module per model.

`MODELS` maps a model key (``"rm520n"``) to its `hil.sim.model.ModemModel`.
To add a model, write ``<key>.py`` defining ``MODEL`` and list it here.
"""
from __future__ import annotations

from hil.sim.model import ModemModel
from hil.sim.models import bc66, ec25, rm500q, rm520n, sim7080g, sim7600, sim8200

# gateway modems (5G / LTE) and the NB-IoT nodes' modules (whose UDP sockets are real loopback sockets)
MODELS: dict[str, ModemModel] = {
    model.key: model
    for model in (rm500q.MODEL, rm520n.MODEL, ec25.MODEL, sim7600.MODEL, sim8200.MODEL, bc66.MODEL, bc66.BC95, sim7080g.MODEL)
}
