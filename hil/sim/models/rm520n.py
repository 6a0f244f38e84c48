"""Quectel RM520N-GL (5G sub-6, USB 2c7c:0801) — defaults to NR standalone (NR5G-SA)."""
from __future__ import annotations

from hil.sim.model import ModemModel
from hil.sim.models import common, quectel

MODEL = ModemModel(
    key="rm520n",
    manufacturer="Quectel",
    model="RM520N-GL",
    revision="RM520NGLAAR03A03M4G",
    ati=("Quectel", "RM520N-GL", "Revision: RM520NGLAAR03A03M4G"),
    answers={**common.ANSWERS, **common.NR5G_ANSWERS, **quectel.ANSWERS, 'AT+QENG="servingcell"': quectel.qeng_rm5xx},
    handlers=common.HANDLERS + quectel.HANDLERS,
    boot_urcs=quectel.BOOT_URCS,
    sim_swap_urcs=quectel.SIM_SWAP_URCS,
    initial_state={"rat": "NR5G-SA", "nr_band": 41, "nr_arfcn": 504990},
    signal_commands=common.SIGNAL_COMMANDS | quectel.SIGNAL_COMMANDS,
    usb_id=(0x2C7C, 0x0801),
)
