"""SIMCom SIM8200EA-M2 (5G sub-6, USB 1e0e:9001) — defaults to NR standalone."""
from __future__ import annotations

from hil.sim.model import ModemModel
from hil.sim.models import common, simcom

MODEL = ModemModel(
    key="sim8200",
    manufacturer="SIMCOM INCORPORATED",
    model="SIMCOM_SIM8200EA-M2",
    revision="SIM8200M22_V1.0",
    ati=("Manufacturer: SIMCOM INCORPORATED", "Model: SIMCOM_SIM8200EA-M2", "Revision: SIM8200M22_V1.0",
         "IMEI: {imei}", "+GCAP: +CGSM"),
    answers={**common.ANSWERS, **common.NR5G_ANSWERS, **simcom.ANSWERS},
    handlers=common.HANDLERS + simcom.HANDLERS,
    boot_urcs=simcom.BOOT_URCS,
    sim_swap_urcs=simcom.SIM_SWAP_URCS,
    initial_state={"rat": "NR5G-SA", "mcc": "242", "mnc": "12", "operator_long": "Telia N",
                   "operator_short": "Telia", "nr_band": 78, "nr_arfcn": 640704, "imsi": "242120123456789",
                   "iccid": "89471200001234567895", "imei": "862636050123452"},
    signal_commands=common.SIGNAL_COMMANDS | simcom.SIGNAL_COMMANDS,
    usb_id=(0x1E0E, 0x9001),
)
