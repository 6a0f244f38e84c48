"""The node firmware's exception tree: one root, NodeError, and one leaf per way a part of the cycle can fail.

The gateway packages' leaves also subclass the matching builtin
(ModemTimeout(ModemError, TimeoutError)); MicroPython cannot: a class with
both an Exception subclass and OSError or ValueError as bases fails with
"multiple bases have instance lay-out conflict". So every leaf here derives
from NodeError only, and the node's cycle catches NodeError wherever a failure
must cost one step, never the cycle.
"""


class NodeError(Exception):
    """Root of every error the node firmware raises on purpose."""


class ConfigError(NodeError):
    """The config or key file the provisioning tool wrote is missing or wrong."""


class StorageError(NodeError):
    """Flash could not be read or written, or a record in it is damaged."""


class SensorError(NodeError):
    """A sensor did not answer, or answered with data that fails its own check (CRC, ID register)."""


class ModemError(NodeError):
    """The modem did not do what was asked."""


class ModemTimeout(ModemError):
    """No final result code (or no awaited URC) arrived in time: the modem is slow, asleep or hung."""


class ModemGarbage(ModemError):
    """The modem answered, but not in the format its AT manual gives: the driver cannot read it."""


class CommandError(ModemError):
    """The modem answered ERROR, +CME ERROR: <code> or +CMS ERROR: <code>; `code` is None for a bare ERROR."""

    def __init__(self, command, final, code=None):
        super().__init__("%s answered %s" % (command, final))
        self.command = command
        self.final = final
        self.code = code


class NetworkError(ModemError):
    """The modem works but the network does not: not registered, no PDP context, the socket failed."""


class CoapError(NodeError):
    """A datagram that is not a CoAP message (RFC 7252 §3) this node accepts."""


class AckError(NodeError):
    """The lender's answer is not an ack map {1: [stored], 2: [already], 3: [[index, reason, text]]}."""


class DeliveryError(NodeError):
    """No answer from the lender after every retransmission (RFC 7252 §4.2), or it reset the exchange."""


class OscoreError(NodeError):
    """An OSCORE message that does not verify (RFC 8613 §8.4: wrong context, changed, replayed), or that cannot be made."""
