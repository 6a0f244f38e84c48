"""The lender's signed commands on the node (telemetry.command, issue 15): verify one, apply it, owe its outcome.

A node sleeps in PSM and never polls: the lender hands it at most one
pending command in the ack to its report (ack key 7), which the send phase
keeps unverified in flash (delivery, node.keep_command); the node wakes again
at once and, at the start of that wake (cmdstate.startup), this module,
loaded for the purpose and released after it, applies the command only if:

* it is a COSE_Sign1 (alg EdDSA) that the lender key pinned at provisioning
  (node.json "lender_key") signed, with the external AAD COMMAND_AAD;
* it names this node's device id;
* its seq is above the last one applied (cmdstate: replayed, reordered or
  older commands are refused);
* it has not expired by the node's clock (the RTC, or without one the
  lender time in the newest token an authenticated ack brought; neither:
  refused, nothing is known to be fresh);
* its body has the shape of its kind.

Anything else is refused with a log line and changes nothing. A verified
command is applied by one save of the command state, which also records the
outcome the node owes; this wake's envelope carries it (the `command.*`
records of telemetry.command.outcome_records; cmdstate clears it once that
envelope is committed). Kinds:

* inspect {1: nonce, 2: assets}: the node has one asset and samples all of
  its sensors every wake; applied, the outcome with the nonce is owed and
  this wake's envelope (sent ahead of any backlog, as an alarm is) is the
  snapshot;
* permit {1: asset, 2: from, 3: until, 4: reason, 5: inputs}: the lender sends a
  permit only to the devices of its asset; openings of the inputs (tamper,
  motion, tilt; every one when empty) inside [from, until) are signed as
  event.* records, not alarm.* (sampling); at most MAX_PERMITS in force, the
  one that ends first making room;
* configure {1: version, 2: document}: a TOML document of the node's own
  settings ([sampling] interval_s, [rules] tilt_alarm_deg, motion_mg, with
  node.json's ranges); validated whole before anything changes, refused
  with its errors (the old configuration stays in force), applied by the same
  one save (the previous one kept for rollback);
* rotate-key and any other kind: refused (signed as refused, with the reason).
"""

import binascii
import hashlib

import cbordecode
from cmdstate import MAX_DETAIL, MAX_PERMITS, SETTINGS
from errors import NodeError
from runtime import log, unix_time

COMMAND_AAD = b"pledgewatch-command/1"
ALG_EDDSA = -8
MAX_COMMAND = 384  # ack.MAX_COMMAND


class Refused(NodeError):
    """A command the node does not apply (and signs nothing about)."""


def _fields(raw, lender_key):
    """The command's payload map if the lender's key signed raw; Refused otherwise."""
    if lender_key is None:
        raise Refused("no lender key in node.json: this node applies no command")
    try:
        message = cbordecode.decode(raw, max_bytes=MAX_COMMAND, max_depth=4, max_items=96)
    except ValueError as error:
        raise Refused("not CBOR: %s" % error)
    parts = getattr(message, "value", None)
    if (getattr(message, "number", None) != 18 or not isinstance(parts, list) or len(parts) != 4
            or type(parts[0]) is not bytes or not isinstance(parts[1], dict) or type(parts[2]) is not bytes
            or type(parts[3]) is not bytes or len(parts[3]) != 64):
        raise Refused("not a COSE_Sign1 message")
    protected, _, payload, signature = parts
    try:
        header = cbordecode.decode(protected, max_bytes=64, max_depth=1, max_items=8)
        fields = cbordecode.decode(payload, max_bytes=MAX_COMMAND, max_depth=3, max_items=80)
    except ValueError as error:
        raise Refused("malformed: %s" % error)
    if not isinstance(header, dict) or header.get(1) != ALG_EDDSA:
        raise Refused("not signed with EdDSA")
    import cbor
    import ed25519

    structure = cbor.encode(["Signature1", protected, COMMAND_AAD, payload])
    if not ed25519.verify(lender_key, structure, signature):
        raise Refused("the signature is not the lender's")
    if not isinstance(fields, dict) or sorted(fields) != [1, 2, 3, 4, 5, 6] or not isinstance(fields[6], dict):
        raise Refused("the payload is not {1: device, 2: seq, 3: kind, 4: issued, 5: expires, 6: body}")
    for key in (2, 4, 5):
        if type(fields[key]) is not int or fields[key] < 0:
            raise Refused("command field %d is not an unsigned integer" % key)
    return fields


def _now(node):
    now = unix_time()
    token = node.state.token if node.state is not None else None
    if now is None and token is not None:
        now = int.from_bytes(token[:4], "big")  # the lender's time when it made the token: a lower bound
    return now


def _id_list(value, what):
    if not isinstance(value, list) or len(value) > 32:
        raise Refused("%s is not a list of up to 32 ids" % what)
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= 64:
            raise Refused("%s holds %r, not an id" % (what, item))
    return value


def _number(text):
    try:
        return int(text)
    except ValueError:
        return float(text)


def settings_of(document):
    """({setting: value}, errors) of a configuration document: a TOML subset (sections, `key = number`, comments)."""
    try:
        text = document.decode()
    except UnicodeError:
        return None, ["the document is not UTF-8 text"]
    settings, errors, section = {}, [], None
    for number, line in enumerate(text.split("\n"), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in ("sampling", "rules"):
                errors.append("line %d: table [%s] is not the lender's to set on a node (sampling, rules)" % (number, section))
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), value.strip()
        spec = SETTINGS.get(key)
        if not equals or spec is None or spec[0] != section:
            errors.append("line %d: %r is not a node setting ([sampling] interval_s, [rules] tilt_alarm_deg, "
                          "motion_mg)" % (number, line))
            continue
        if key in settings:
            errors.append("line %d: %s is set twice" % (number, key))
            continue
        try:
            parsed = _number(value)
        except ValueError:
            errors.append("line %d: %s = %r is not a number" % (number, key, value))
            continue
        if spec[1] is int and type(parsed) is not int:
            errors.append("line %d: %s must be an integer" % (number, key))
        elif not spec[2] <= parsed <= spec[3]:
            errors.append("line %d: %s must be in %r..%r, got %r" % (number, key, spec[2], spec[3], parsed))
        else:
            settings[key] = parsed
    if not settings and not errors:
        errors.append("the document sets nothing")
    return (None if errors else settings), errors


def receive(node, commands, raw):
    """Verify and apply one command (see the module docstring); its report entry. Saves the command state."""
    config = node.config
    try:
        fields = _fields(raw, config.lender_key)
        seq = fields[2]
        if fields[1] != config.device:
            raise Refused("command %d is for device %r, not %r" % (seq, fields[1], config.device))
        if seq <= commands.last_seq:
            raise Refused("command %d is not newer than the last applied (%d): replayed or old" % (seq, commands.last_seq))
        now = _now(node)
        if now is None:
            raise Refused("command %d: the node's clock is not set, so it cannot tell whether it expired" % seq)
        if now >= fields[5]:
            raise Refused("command %d expired at %d" % (seq, fields[5]))
        return _apply(node, commands, raw, fields, now)
    except Refused as error:
        log("refused a command: %s" % error)
        return {"refused": str(error)}


def _apply(node, commands, raw, fields, now):
    seq, kind, body = fields[2], fields[3], fields[6]
    owed = {"seq": seq, "kind": kind if isinstance(kind, str) else "?",
            "digest": binascii.hexlify(hashlib.sha256(raw).digest()[:16]).decode(), "outcome": "applied"}
    permits, config, digest, previous = commands.permits, commands.config, commands.config_digest, commands.previous
    if kind == "inspect":
        if sorted(body) != [1, 2] or type(body[1]) is not bytes or not 8 <= len(body[1]) <= 32:
            raise Refused("an inspect body is {1: nonce (8..32 bytes), 2: [asset, ...]}")
        _id_list(body[2], "inspect assets")
        owed["nonce"] = binascii.hexlify(body[1]).decode()
    elif kind == "permit":
        if (sorted(body) != [1, 2, 3, 4, 5] or not isinstance(body[1], str) or type(body[2]) is not int
                or type(body[3]) is not int or not 0 <= body[2] < body[3] or not isinstance(body[4], str)):
            raise Refused("a permit body is {1: asset, 2: from, 3: until (after from), 4: reason, 5: [input, ...]}")
        inputs = _id_list(body[5], "permit inputs")
        permits = [p for p in permits if p[1] > now] + [[body[2], body[3], inputs]]
        while len(permits) > MAX_PERMITS:
            permits.remove(min(permits, key=lambda p: p[1]))
    elif kind == "configure":
        if sorted(body) != [1, 2] or type(body[1]) is not int or type(body[2]) is not bytes:
            raise Refused("a configure body is {1: version, 2: document}")
        settings, errors = settings_of(body[2])
        if errors:
            owed["outcome"], owed["detail"] = "refused", "; ".join(errors)[:MAX_DETAIL]
        else:
            previous = [config, digest]
            config = settings
            digest = binascii.hexlify(hashlib.sha256(body[2]).digest()[:16]).decode()
        if digest is not None:
            owed["config"] = digest
    else:
        owed["outcome"], owed["detail"] = "refused", "%s is not supported by this node" % owed["kind"]
    # One save: the seq, the outcome owed, the permit or configuration. A cut before it: nothing happened.
    commands.last_seq, commands.owed = seq, owed
    commands.permits, commands.config, commands.config_digest, commands.previous = permits, config, digest, previous
    commands.save()
    return {"seq": seq, "kind": owed["kind"], "outcome": owed["outcome"]}
