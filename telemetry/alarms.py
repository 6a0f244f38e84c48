"""The alarm vocabulary: alarm names, their severities, states and fields, and the gateway pseudo-asset.

An alarm event is a group of SenML records in one envelope:

    alarm.<kind>.<asset>            "raised" | "cleared"
    alarm.<kind>.<asset>.severity   "critical" | "major" | "minor"
    alarm.<kind>.<asset>.sensors    the sensors that decided it, comma-separated (optional)
    alarm.<kind>.<asset>.value      the measured value, with its unit (optional)
    alarm.<kind>.<asset>.detail     a short text (optional)

Device-level alarms (connectivity, SIM, modem, unbound sensors) belong to the
pseudo-asset `GATEWAY`. Envelopes holding an alarm skip the batching delay
and are never dropped by a spool's overflow policy.
"""
from __future__ import annotations

from dataclasses import dataclass

PREFIX = "alarm."
GATEWAY = "gateway"              # the reserved asset name of device-level alarms
RAISED, CLEARED = "raised", "cleared"
STATES = (RAISED, CLEARED)
FIELDS = ("severity", "sensors", "value", "detail")
SEVERITY = {
    "tamper": "critical", "geofence": "critical", "weight": "critical", "sim": "critical", "modem": "critical",
    "door": "major", "motion": "major", "temperature": "major", "silence": "major",
    "humidity": "minor", "connectivity": "minor",
    "modem-down": "major", "registration": "minor",   # the gateway's modem health monitor (agent.health)
}
KINDS = tuple(SEVERITY)


@dataclass(frozen=True, slots=True)
class AlarmName:
    """A record name of the alarm grammar, split: kind, asset, and the field ("" for the state record)."""

    kind: str
    asset: str
    field: str = ""

    @property
    def alarm(self) -> str:
        """The alarm's own name, `alarm.<kind>.<asset>`."""
        return alarm_name(self.kind, self.asset)


def alarm_name(kind: str, asset: str) -> str:
    return f"{PREFIX}{kind}.{asset}"


def parse_alarm_name(name: str) -> AlarmName | None:
    """`name` split by the grammar above, or None if it is not an alarm record's name.

    Kinds are not limited to `KINDS`: a newer device may raise a kind this
    code does not know, and the lender must still show it.
    """
    parts = name.split(".")
    if len(parts) not in (3, 4) or parts[0] != PREFIX[:-1] or not parts[1] or not parts[2]:
        return None
    if len(parts) == 4 and parts[3] not in FIELDS:
        return None
    return AlarmName(parts[1], parts[2], parts[3] if len(parts) == 4 else "")
