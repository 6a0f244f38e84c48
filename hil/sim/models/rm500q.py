"""Quectel RM500Q-GL (5G sub-6, USB 2c7c:0800) — defaults to EN-DC (NR5G-NSA) on an LTE anchor."""
from __future__ import annotations

from hil.sim.model import ModemModel
from hil.sim.models import common, quectel

MODEL = ModemModel(
    key="rm500q",
    manufacturer="Quectel",
    model="RM500Q-GL",
    revision="RM500QGLABR11A06M4G",
    ati=("Quectel", "RM500Q-GL", "Revision: RM500QGLABR11A06M4G"),
    answers={**common.ANSWERS, **common.NR5G_ANSWERS, **quectel.ANSWERS, 'AT+QENG="servingcell"': quectel.qeng_rm5xx},
    handlers=common.HANDLERS + quectel.HANDLERS,
    boot_urcs=quectel.BOOT_URCS,
    sim_swap_urcs=quectel.SIM_SWAP_URCS,
    initial_state={"rat": "NR5G-NSA", "band": 66, "earfcn": 66886, "nr_band": 71, "nr_arfcn": 126270},
    signal_commands=common.SIGNAL_COMMANDS | quectel.SIGNAL_COMMANDS,
    usb_id=(0x2C7C, 0x0800),
)
