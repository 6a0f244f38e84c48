"""The lender's signed commands on the node (commands, cmdstate): applied once, in order, only when verified.

The commands are signed here with the node's own Ed25519 code under a test
lender key, in the shape telemetry.command signs (the shared vectors pin the
lender's exact bytes: test_vectors). Random sequences use a seeded generator
(no hypothesis under MicroPython): valid, replayed, reordered, expired,
forged and other-device commands, with restarts (the state reloaded from
flash) and power cuts during the save.
"""

import random

import cbor
import cmdstate
import commands
import ed25519
from check import equal, fresh_dir

LENDER = ed25519.SigningKey(bytes(range(100, 132)))
OTHER = ed25519.SigningKey(bytes(range(1, 33)))
DEVICE = "yard-17"
NOW = 1767229200


class _Config:
    def __init__(self, lender_key=LENDER.public_key):
        self.device = DEVICE
        self.lender_key = lender_key
        self.interval_s = 900
        self.tilt_alarm_deg = 15.0
        self.motion_mg = 250


class _State:
    token = None


class _Node:
    def __init__(self, root):
        self.config = _Config()
        self.state = _State()
        self.report = {}
        self.root = root


def sign(fields, key=LENDER, alg=-8):
    protected = cbor.encode({1: alg})
    payload = cbor.encode(fields)
    signature = key.sign(cbor.encode(["Signature1", protected, commands.COMMAND_AAD, payload]))
    return cbor.encode(cbor.Tag(18, [protected, {}, payload, signature]))


def command(seq, kind="inspect", body=None, device=DEVICE, issued=NOW - 60, expires=NOW + 600, key=LENDER):
    if body is None:
        body = {1: bytes(range(seq % 200, seq % 200 + 16)), 2: []}
    return sign({1: device, 2: seq, 3: kind, 4: issued, 5: expires, 6: body}, key)


def _flash(path):
    """A digest of the state file, read a slot at a time (the test heap is as fragmented as a device's)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for _ in (0, 1):
            digest.update(file.read(cmdstate.SLOT))
    return digest.digest()


def _fresh():
    root = fresh_dir("cmd")
    return root, _Node(root), cmdstate.CommandState(root + "/commands.bin")


def _receive(node, state, raw, now=NOW):
    saved = commands.unix_time
    commands.unix_time = lambda: now
    try:
        return commands.receive(node, state, raw)
    finally:
        commands.unix_time = saved


def test_an_inspection_is_applied_once_and_its_outcome_is_owed_with_the_nonce():
    root, node, state = _fresh()
    raw = command(1)
    equal(_receive(node, state, raw), {"seq": 1, "kind": "inspect", "outcome": "applied"})
    again = cmdstate.CommandState(root + "/commands.bin")  # after a restart: from flash
    equal(again.last_seq, 1)
    records = again.records()
    names = [r["name"] for r in records]
    equal(names, ["command.seq", "command.kind", "command.digest", "command.outcome", "command.nonce"])
    import hashlib

    equal(records[2]["data"], hashlib.sha256(raw).digest()[:16], "the digest of the exact signed bytes")
    equal(records[4]["data"], bytes(range(1, 17)))
    assert "refused" in _receive(node, again, raw), "the same command again is a replay"
    again.reported()
    equal(cmdstate.CommandState(root + "/commands.bin").records(), [], "reported: owed no more")


def test_unverifiable_commands_are_refused_and_change_nothing():
    root, node, state = _fresh()
    _receive(node, state, command(5))
    before = _flash(root + "/commands.bin")
    good = command(6)
    flipped = bytearray(good)
    flipped[-3] ^= 1
    cases = {
        "replayed": command(5),
        "older": command(4),
        "expired": command(6, expires=NOW),
        "for another device": command(6, device="yard-18"),
        "signed by another key": command(6, key=OTHER),
        "a changed signature": bytes(flipped),
        "not EdDSA": sign({1: DEVICE, 2: 6, 3: "inspect", 4: NOW, 5: NOW + 60, 6: {1: bytes(16), 2: []}}, alg=-7),
        "a malformed body": command(6, body={1: b"short", 2: []}),
        "a payload without its expiry": sign({1: DEVICE, 2: 6, 3: "inspect", 4: NOW, 6: {1: bytes(16), 2: []}}),
        "not CBOR": b"\xd2\x84\x41",
        "too large": command(6, body={1: bytes(16), 2: ["a" * 60] * 6}),
    }
    for what, raw in cases.items():
        result = _receive(node, state, raw)
        assert "refused" in result, (what, result)
    equal(_flash(root + "/commands.bin"), before, "nothing was written")
    node.config.lender_key = None
    assert "no lender key" in _receive(node, state, good)["refused"]
    node.config.lender_key = LENDER.public_key
    equal(_receive(node, state, good, now=None)["refused"][-26:], "cannot tell whether it expired"[-26:])
    node.state.token = (NOW).to_bytes(4, "big") + bytes(8)  # the lender's time in its token: a lower bound
    equal(_receive(node, state, good, now=None)["outcome"], "applied")


def test_a_permit_makes_openings_inside_its_window_events():
    root, node, state = _fresh()
    body = {1: "loan-2026-117", 2: NOW + 100, 3: NOW + 200, 4: "release of goods, contract C-17", 5: ["tamper"]}
    equal(_receive(node, state, command(1, "permit", body))["outcome"], "applied")
    state = cmdstate.CommandState(root + "/commands.bin")
    equal([state.permitted(t, "tamper") for t in (NOW + 99, NOW + 100, NOW + 199, NOW + 200, None)],
          [False, True, True, False, False])
    assert not state.permitted(NOW + 150, "motion"), "only the inputs it names"
    equal([r["name"] for r in state.records()], ["command.seq", "command.kind", "command.digest", "command.outcome"])
    for seq in range(2, 6):  # at most MAX_PERMITS in force: the one that ends first makes room
        later = dict(body)
        later[2], later[3], later[5] = NOW + seq * 1000, NOW + seq * 1000 + 10, []
        _receive(node, state, command(seq, "permit", later))
    equal(len(state.permits), cmdstate.MAX_PERMITS)
    assert state.permitted(NOW + 5005, "motion") and not state.permitted(NOW + 150, "tamper")


def test_a_configuration_is_validated_whole_then_applied_in_one_save():
    root, node, state = _fresh()
    good = b"# the lender's settings for yard-17\n[sampling]\ninterval_s = 600\n[rules]\ntilt_alarm_deg = 10.5\n"
    equal(_receive(node, state, command(1, "configure", {1: 1, 2: good}))["outcome"], "applied")
    state = cmdstate.CommandState(root + "/commands.bin")
    config = _Config()
    state.apply_settings(config)
    equal((config.interval_s, config.tilt_alarm_deg, config.motion_mg), (600, 10.5, 250))
    import hashlib

    digest = hashlib.sha256(good).digest()[:16]
    equal(state.records()[-1], {"name": "command.config", "data": digest})
    for bad in (b"[sampling]\ninterval_s = 5\n", b"[sampling]\ninterval_s = 600\nwatchdog_ms = 1\n",
                b"[modem]\napn = 'x'\n", b"[rules]\nmotion_mg = 2.5\n", b"", b"\xff\xfe"):
        result = _receive(node, state, command(state.last_seq + 1, "configure", {1: 2, 2: bad}))
        equal(result["outcome"], "refused", bad)
        records = {r["name"]: r for r in state.records()}
        assert records["command.detail"]["string"], bad
        equal(records["command.config"]["data"], digest, "the configuration in force is still the good one")
        config = _Config()
        cmdstate.CommandState(root + "/commands.bin").apply_settings(config)
        equal(config.interval_s, 600)
    equal(_receive(node, state, command(99, "rotate-key", {1: bytes(16)}))["outcome"], "refused")


class _Cut(Exception):
    pass


def test_a_power_cut_during_the_save_leaves_the_state_before_or_after_the_command():
    for trial in range(24):
        root, node, state = _fresh()
        _receive(node, state, command(1, "configure", {1: 1, 2: b"[sampling]\ninterval_s = 600\n"}))
        cut_at = (trial * 37) % (2 * cmdstate.SLOT)
        real_open = open

        class Torn:
            def __init__(self, file):
                self.file = file

            def seek(self, where):
                self.file.seek(where)

            def write(self, data):
                self.file.write(data[: cut_at % (len(data) + 1)])
                raise _Cut()

            def __enter__(self):
                return self

            def __exit__(self, *info):
                self.file.close()

        cmdstate.open = lambda path, mode="r": Torn(real_open(path, mode))
        try:
            _receive(node, state, command(2, "configure", {1: 2, 2: b"[sampling]\ninterval_s = 60\n"}))
        except _Cut:
            pass
        finally:
            del cmdstate.open
        after = cmdstate.CommandState(root + "/commands.bin")
        config = _Config()
        after.apply_settings(config)
        equal((after.last_seq, config.interval_s) in ((1, 600), (2, 60)), True, (trial, after.last_seq, config.interval_s))
        equal(after.owed["seq"], after.last_seq, "the outcome owed is the applied command's")


def test_random_command_sequences_never_apply_one_twice_out_of_order_or_unverified():
    random.seed(20261206)  # MicroPython's random: getrandbits, seeded; no hypothesis here
    rng = random
    for run in range(4):
        root, node, state = _fresh()
        issued = []  # (seq, raw) the lender really issued for this node, valid now
        applied = []
        for step in range(12):
            choice = rng.getrandbits(3)
            seq = (issued[-1][0] if issued else 0) + 1 + rng.getrandbits(1)
            valid = False
            if choice <= 2 or not issued:
                raw = command(seq)
                issued.append((seq, raw))
                valid = True
            elif choice == 3:
                seq, raw = issued[rng.getrandbits(8) % len(issued)]  # replayed or reordered
            elif choice == 4:
                raw = command(seq, expires=NOW - rng.getrandbits(4))
            elif choice == 5:
                raw = command(seq, key=OTHER)
            elif choice == 6:
                raw = command(seq, device="yard-%d" % rng.getrandbits(4))
            else:
                raw = bytearray(command(seq))
                raw[rng.getrandbits(7) % len(raw)] ^= 1 << rng.getrandbits(3)
                raw = bytes(raw)
            if rng.getrandbits(2) == 0:
                state = cmdstate.CommandState(root + "/commands.bin")  # a restart
            result = _receive(node, state, raw)
            if "outcome" in result:
                applied.append(result["seq"])
            else:
                assert not valid or seq <= (applied[-1] if applied else 0), (run, step, seq, result)
        equal(applied, sorted(set(applied)), "strictly increasing, never twice")
        issued_seqs = [s for s, _ in issued]
        for seq in applied:
            assert seq in issued_seqs, "only commands the lender signed for this node"

