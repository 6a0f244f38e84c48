"""Quectel EC25 (LTE Cat 4, USB 2c7c:0125) — LTE only; its QENG lacks <CQI> and <tx_power>."""
from __future__ import annotations

from hil.sim.model import ModemModel
from hil.sim.models import common, quectel

MODEL = ModemModel(
    key="ec25",
    manufacturer="Quectel",
    model="EC25",
    revision="EC25EFAR06A06M4G",
    ati=("Quectel", "EC25", "Revision: EC25EFAR06A06M4G"),
    answers={**common.ANSWERS, **quectel.ANSWERS, 'AT+QENG="servingcell"': quectel.qeng_ec25},
    handlers=common.HANDLERS + quectel.HANDLERS,
    boot_urcs=quectel.BOOT_URCS,
    sim_swap_urcs=quectel.SIM_SWAP_URCS,
    initial_state={"rat": "LTE", "band": 3, "earfcn": 1300, "mcc": "262", "mnc": "01",
                   "operator_long": "Telekom.de", "operator_short": "TDG", "imsi": "262011234567890",
                   "iccid": "89490200001234567897", "imei": "861107030123450"},
    signal_commands=common.SIGNAL_COMMANDS | quectel.SIGNAL_COMMANDS,
    usb_id=(0x2C7C, 0x0125),
)
