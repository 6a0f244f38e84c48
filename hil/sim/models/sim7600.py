"""SIMCom SIM7600E-H (LTE Cat 4, USB 1e0e:9001) — LTE only."""
from __future__ import annotations

from hil.sim.model import ModemModel
from hil.sim.models import common, simcom

MODEL = ModemModel(
    key="sim7600",
    manufacturer="SIMCOM INCORPORATED",
    model="SIMCOM_SIM7600E-H",
    revision="SIM7600M22_V2.0",
    ati=("Manufacturer: SIMCOM INCORPORATED", "Model: SIMCOM_SIM7600E-H", "Revision: SIM7600M22_V2.0",
         "IMEI: {imei}", "+GCAP: +CGSM,+DS,+ES"),
    answers={**common.ANSWERS, **simcom.ANSWERS},
    handlers=common.HANDLERS + simcom.HANDLERS,
    boot_urcs=simcom.BOOT_URCS,
    sim_swap_urcs=simcom.SIM_SWAP_URCS,
    initial_state={"rat": "LTE", "band": 3, "earfcn": 1850, "mcc": "460", "mnc": "11",
                   "operator_long": "CHN-CT", "operator_short": "CT", "imsi": "460110123456789",
                   "iccid": "89860311234567890123", "imei": "867584034313614"},
    signal_commands=common.SIGNAL_COMMANDS | simcom.SIGNAL_COMMANDS,
    usb_id=(0x1E0E, 0x9001),
)
