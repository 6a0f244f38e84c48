"""The node's delivery phase: its OSCORE context, the modem, and the confirmable POSTs that empty its outbox.

Loaded for the phase and forgotten after it (runtime.release). In order:

* the OSCORE context: node.oscore (oscorekeys derives its keys, oscore keeps
  the sequence record); without one, the envelopes wait in the outbox,
  unless node.json says "insecure": true, which sends plain CoAP;
* the modem: woken (a reset pulse if it is hung), set up after power-on,
  attached, a UDP socket to the lender;
* each buffered envelope, alarms first, oldest first, at most
  max_sends_per_cycle, POSTed to the node resource, the last one with
  Release Assistance (the drivers), `modem.release()` after the last ack;
* the outcome: an envelope leaves the outbox only on an ack that names it and
  that OSCORE authenticated (stored, already present, or refused for good:
  then a signed "refused" gap record says so, saved in the chain state
  *before* the envelope goes). Whole-request errors and unauthenticated
  answers never delete anything. The newest lender token an authenticated
  ack brought is kept for the next envelopes;
* a lender command (ack key 7): the first one an authenticated ack brought
  this cycle is kept in node.command, unverified, which the cycle writes to
  flash after this phase (cmdstate.keep) for the next wake to verify and
  apply; with "insecure": true none is taken.
"""

import json
import os

# What every exchange needs is loaded with this module, before the modem's chatter: long-lived code packed
# together, not scattered among the modem session's short-lived strings (a fragmented heap fails the large
# receive buffers first). oscore too, as soon as the context is found (_context, before the modem is woken).
import ack as acks
import coap
import machine
import uplink
from errors import (
    AckError,
    ConfigError,
    DeliveryError,
    ModemError,
    NodeError,
    OscoreError,
    StorageError,
)
from runtime import log, release, unix_time

# Refusals that sending again cannot change (telemetry.ack.Reason): malformed, bad signature,
# oversize, conflict, chain, binding (bound to another enrollment). Unknown key (2) and revoked (4) may
# change at the lender, and so may a code this firmware does not know: they stay.
PERMANENT_REFUSALS = (1, 3, 5, 6, 7, 8)
# Whole-request answers about this one body (not a CBOR envelope, too large, wrong format): the next envelope
# may fare better, but this one stays (a whole-request answer never names a seq, so it never deletes one).
ABOUT_THIS_BODY = (0x80, 0x8D, 0x8F)  # 4.00, 4.13, 4.15
REFUSED_GAP = "refused"  # telemetry.envelope.GapReason.REFUSED: let go after a final refusal the lender signed for
CONTEXT_FILE = "node.oscore"


def _profile(node):
    try:
        with open(node._file("modem.json")) as file:
            profile = json.loads(file.read())
        if isinstance(profile, dict) and profile.get("model") == node.config.modem_model:
            return profile
    except (OSError, ValueError):
        pass
    return None


def _save_profile(node, profile):
    with open(node._file("modem.json"), "w") as file:
        file.write(json.dumps(profile))


def make_modem(node, port, profile):
    config = node.config
    options = {"timeout_ms": config.timeout_ms, "network_timeout_ms": config.network_timeout_ms,
               "reset_active": config.reset_active, "reset_pulse_ms": config.reset_pulse_ms,
               "boot_ms": config.boot_ms, "rai": config.rai}
    if config.reset_pin is not None:
        options["reset_pin"] = machine.Pin(config.reset_pin, machine.Pin.OUT)
    if config.modem_model == "sim7080g":
        import simcom

        return simcom.Sim7080(port, apn=config.apn, **options)
    import quectel

    return quectel.Bc66(port, socket_api=(profile or {}).get("socket_api"), **options)


def _uart(node):
    config = node.config
    settings = {"baudrate": config.baudrate, "timeout": 0, "timeout_char": 0, "rxbuf": 1024}
    if config.uart_tx is not None:
        settings["tx"] = config.uart_tx
    if config.uart_rx is not None:
        settings["rx"] = config.uart_rx
    return machine.UART(config.uart, **settings)


def send(node, box):
    """POST what the outbox holds (see the module docstring); every failure ends in node._note, never a crash."""
    from atport import AtPort

    report = node.report
    report["sent"] = []
    report["acked"] = []
    report["refused"] = []
    report["transmissions"] = 0
    report["at_commands"] = 0
    if not len(box):
        return
    seqs = box.seqs()[: node.config.max_sends]  # now, while the send phase's heap is emptiest
    context = _context(node)  # False: nothing may be sent; None: plain CoAP ("insecure": true, no node.oscore)
    if context is False:
        return
    try:
        uart = _uart(node)
    except (OSError, ValueError) as error:
        node._note("modem UART", error)
        return
    port = AtPort(uart, feed=node.feed)
    try:
        _send(node, box, port, context, seqs)
    except NodeError as error:
        node._note("send", error)
    finally:
        report["at_commands"] = port.commands
        report["at_garbage"] = port.garbage
        try:
            uart.deinit()
        except (OSError, AttributeError):
            pass


def _context(node):
    """The OSCORE context (node.oscore), or None: then plain CoAP only if the config is insecure and there is no
    node.oscore at all (the report says "oscore": false); a context that is there but unusable stops the sending."""
    report = node.report
    report["oscore"] = False
    path = node.root.rstrip("/") + "/" + CONTEXT_FILE
    try:
        os.stat(path)
    except OSError:
        if not node.config.insecure:
            node._note("send", ConfigError("no %s (the OSCORE context provisioning writes): the envelopes stay in "
                                           "the outbox; provision the node, or set \"insecure\": true" % CONTEXT_FILE))
            return False
        return None
    import oscore  # first: the key derivation's code, released below, then leaves its space at the top
    import oscorekeys

    try:
        keys = oscorekeys.load(path)
    except StorageError as error:
        node._note("OSCORE context", error)
        return False
    finally:
        release("oscorekeys")  # the master secret and the derivation are not needed again this cycle
    if keys is None:
        node._note("OSCORE context", StorageError("%s cannot be opened" % CONTEXT_FILE))
        return False
    try:
        context = oscore.Context(path, keys)
    except (StorageError, OscoreError) as error:
        node._note("OSCORE context", error)
        return False
    report["oscore"] = True
    return context


def _send(node, box, port, context, seqs):
    config, report = node.config, node.report
    profile = _profile(node)
    if config.modem_model != "sim7080g" and (profile is None or node.reset_cause != machine.DEEPSLEEP_RESET):
        # The module will be set up (quectel.Bc66.setup): its code (modemsetup) is loaded here, beside the driver's,
        # as it was when it was part of the driver, and released once the module is set up (node.send releases it
        # whatever happens). Most wakes find the module set up, and never load it.
        import modemsetup

        del modemsetup
    modem = make_modem(node, port, profile)
    reset = modem.wake()
    report["modem_reset"] = reset
    if reset or profile is None or node.reset_cause != machine.DEEPSLEEP_RESET:
        settings = {"psm": config.psm}
        profile = {"model": config.modem_model}
        profile.update(modem.setup(settings))
        _save_profile(node, profile)
    modem.attach()
    if unix_time() is None:  # the RTC lost its time: the network's (modemsetup, loaded for the call only)
        import modemsetup

        try:
            modemsetup.set_clock(node, modem)
        finally:
            release("modemsetup")
    socket = modem.open_udp(config.lender_host, config.lender_port)

    settled = []
    link = None
    try:
        link = uplink.Uplink(modem, socket, config.lender_path,
                             uplink.Timing(config.ack_timeout_ms, max_retransmit=config.max_retransmit,
                                           response_timeout_ms=config.response_timeout_ms),
                             context=context)
        try:
            for index, seq in enumerate(seqs):
                node.feed()
                try:
                    if not _deliver(node, box, link, seq, settled, index == len(seqs) - 1):
                        break
                except MemoryError as error:
                    # A heap too fragmented for this exchange: what was acked stays acked (settled below), the
                    # rest waits for the next cycle, which starts from a fresh heap.
                    node._note("delivery of seq %d" % seq, error)
                    break
        finally:
            report["transmissions"] = link.transmissions
            report["ignored_datagrams"] = link.ignored
            if context is not None:
                report["forged"] = link.forged
                report["unprotected"] = link.unprotected
                report["echoes"] = link.echoes
                report["oscore_saves"] = context.saves
    finally:
        _settle(node, box, settled)
        if link is not None and link.transmissions and config.rai:
            try:
                modem.release()  # Release Assistance after the last ack, where the module takes it as a command
            except ModemError as error:
                node._note("release", error)
        try:
            modem.close(socket)
        except ModemError as error:
            node._note("close", error)
        modes = getattr(modem, "radio_modes", None)
        if modes is not None:
            try:
                report["radio_modes"] = modes()
            except ModemError as error:
                node._note("radio", error)


def _deliver(node, box, link, seq, settled, last):
    """POST one buffered envelope; False when the lender is unreachable (stop for this cycle).

    Only an authenticated ack that names seq settles it (plain CoAP, when the config is insecure, has no other).
    """
    report = node.report
    try:
        raw = box.read(seq)
    except StorageError as error:
        node._note("outbox", error)
        if node.state is not None:  # the envelope is gone: say so in a signed gap record
            node.state.note_gap("storage-failure", seq, seq, 1)
            node.state.save()
        return True
    report["sent"].append(seq)
    try:
        answer = link.post(raw, last)
    except DeliveryError as error:
        node._note("delivery of seq %d" % seq, error)
        return False
    except (OscoreError, StorageError) as error:  # the request could not be protected (sequence record)
        node._note("OSCORE for seq %d" % seq, error)
        return False
    del raw
    try:
        text = answer.payload.decode() if answer.code != coap.CHANGED else ""
    except UnicodeError:
        text = ""
    if link.context is not None and not answer.authenticated:
        # Anyone on the path can send this; it proves nothing and deletes nothing.
        node._note("delivery of seq %d" % seq, NodeError("unprotected answer %s %s: not the lender's word, the "
                                                         "envelope stays" % (coap.code_text(answer.code), text)))
        return False
    if answer.code != coap.CHANGED:
        node._note("delivery of seq %d" % seq, NodeError("lender answered %s %s" % (coap.code_text(answer.code), text)))
        if answer.code in ABOUT_THIS_BODY:
            report["refused"].append([seq, coap.code_text(answer.code)])
            return True  # this body only: it stays; the next envelope may pass
        return False  # 4.01/4.03 (this node), a wrong path, or 5.xx: the same for every envelope; next cycle
    try:
        ack = acks.parse_ack(answer.payload)
    except AckError as error:
        node._note("ack of seq %d" % seq, error)
        return True
    if ack.command is not None and link.context is not None and node.command is None:
        node.command = ack.command  # kept for the next wake, which verifies and applies it (one per cycle)
    if ack.token is not None and node.state is not None and node.state.take_token(ack.token):
        node.report["token_changed"] = True
    if seq in ack.settled():
        settled.append(seq)
        report["acked"].append(seq)
    else:
        for _, reason, text in ack.refused:
            log("lender refused seq %d: reason %d, %s" % (seq, reason, text))
            report["refused"].append([seq, reason])
            if reason in PERMANENT_REFUSALS and node.state is not None:
                # Resending cannot help (the lender keeps it in quarantine): let it go, and say so in a signed gap.
                _note_refused(node, seq)
                settled.append(seq)
    return True


def _note_refused(node, seq):
    gap = node.state.gap
    if gap is not None and gap[0] == REFUSED_GAP and gap[1] <= seq <= gap[2]:
        return  # noted already (a power cut came between the save and the outbox update)
    node.state.note_gap(REFUSED_GAP, seq, seq, 1)
    node.report["gap_noted"] = True


def _settle(node, box, settled):
    """Save what the acks changed in the chain state (a refused gap, a newer token), then free the settled slots.

    In that order: a power cut in between resends a settled envelope (the lender answers "already present"),
    never loses one without its gap record. If the save fails, refused envelopes stay in the outbox.
    """
    report = node.report
    saved = True
    if node.state is not None and (report.get("gap_noted") or report.get("token_changed")):
        try:
            node.state.save()
        except StorageError as error:
            node._note("chain state", error)
            saved = False
    if not saved:
        settled = [seq for seq in settled if seq in report["acked"]]
    if settled:
        try:
            box.remove(settled)
        except StorageError as error:
            node._note("outbox", error)
