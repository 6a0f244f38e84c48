"""rotate-key on the gateway: a new key in the same key store, the handover signed by the old one, the switch
crash-safe (SIGKILL at any point leaves the old key with the command owed, or the new one with the handover in
the chain), and the old key destroyed."""
import asyncio
import json
import os
import random
import signal
import stat
import time

from agent.commands import CommandInbox
from agent.spool import Spool
from durable.keystore import KEYSTORE_FILE, DeviceKeys, KeyStoreDescription, create_device_key
from telemetry.command import Command, Outcome, RotateKey
from telemetry.chain import check_chain
from telemetry.identity import DeviceKey
from telemetry.rotation import NEXT_KEY, follow
from telemetry.senml import Record
from tests.agent.test_commands import LENDER, signed
from tests.kit.agent import build_agent
from tests.kit.rules import T0

DEVICE = "gw-1"
KILLS = int(os.environ.get("PLEDGEWATCH_ROTATION_KILLS", "24"))   # a longer run: PLEDGEWATCH_ROTATION_KILLS=300


def inbox(path, keys):
    return CommandInbox(path, DEVICE, LENDER.public_key, clock=lambda: T0 + 60.0, keys=keys)


def rotate(seq):
    return signed(seq, RotateKey(bytes([seq % 256]) * 16))


def spooled(agent):
    """Every envelope the agent's spool holds, as bytes, in seq order."""
    return [item.raw for item in sorted(agent.spool.peek(max_count=1_000_000, max_bytes=1 << 30), key=lambda i: i.seq)]


def started(path, keys, enrolled=None):
    """The agent starting over `path` as `agent run` does: the rotation settled against the spool's head first."""
    spool = Spool.open(path / "spool.db")
    head = spool.head()
    spool.close()
    identity = keys.settle(keys.open(), head.seq if head else None)
    box = inbox(path, keys)
    return build_agent(path, device=DEVICE, identity=identity, recording=True, commands=box), box


def test_rotate_key_hands_over_in_the_chain_and_switches_to_a_new_seed_file(tmp_path):
    enrolled = create_device_key(tmp_path, "software")
    keys = DeviceKeys(tmp_path)
    agent, box = started(tmp_path, keys)
    agent.record([Record("temp", value=4.5, unit="Cel")])
    handover = asyncio.run(agent.command(box, rotate(1)))
    assert handover.kid == enrolled.kid and NEXT_KEY in [r.name for r in handover.records]
    new = agent.identity
    assert new.kid != enrolled.kid and keys.open().public_key == new.public_key
    after = agent.record([Record("temp", value=4.6, unit="Cel")])
    assert after.kid == new.kid
    described = KeyStoreDescription.read(tmp_path / KEYSTORE_FILE)
    assert described.kind == "software" and described.rotated_by == Command.verify(rotate(1), LENDER.public_key).digest
    assert stat.S_IMODE(os.stat(tmp_path / described.key_file).st_mode) == 0o600
    assert not (tmp_path / "device.key").exists()   # the old seed is destroyed: never used again
    assert described.retired[0]["public_key_hex"] == enrolled.public_key.hex()
    followed = follow(spooled(agent), enrolled.device_key(DEVICE))
    assert followed.ok and followed.key_at(after.seq).kid == new.kid, followed.problems
    assert box.unreported() == [] and asyncio.run(agent.command(box, rotate(1))) is None  # the same command: refused
    agent.spool.close()


def test_a_gateway_started_without_its_key_store_refuses_rotate_key_signed(tmp_path):
    box = CommandInbox(tmp_path, DEVICE, LENDER.public_key, clock=lambda: T0 + 60.0)
    applied = box.receive(rotate(1))
    assert applied.outcome is Outcome.REFUSED and "key store" in dict((r.name, r.string) for r in applied.records)[
        "command.detail"]


def rotations_killed(path, rng, make_key, kind, pause):
    """One attempt: a fresh gateway over `path` rotating its key again and again, SIGKILLed after `pause` s; then
    restarted (settle, the owed outcomes signed, one more reading) and checked. Where the kill landed."""
    path.mkdir()
    enrolled = make_key(path)
    enrolled_key = DeviceKey(DEVICE, enrolled.public_key)
    if hasattr(enrolled, "close"):
        enrolled.close()   # a TPM serves one client at a time: the child opens its own
    Spool.open(path / "spool.db").close()
    child = os.fork()
    if child == 0:   # rotations, one after another, until killed
        try:
            keys = DeviceKeys(path, kind=kind)
            agent, box = started(path, keys)

            async def rotations():
                for seq in range(1, 10_000):
                    agent.record([Record("temp", value=seq, unit="Cel")])
                    await agent.command(box, rotate(seq))

            asyncio.run(rotations())
        finally:
            os._exit(0)
    time.sleep(rng.uniform(*pause))
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    described = json.loads((path / KEYSTORE_FILE).read_text())
    owed = inbox(path, None).unreported()
    phase = ("under way, handover not appended" if described.get("rotation") else
             "switched, outcome owed" if owed else "between rotations")
    if described.get("rotation"):
        spool = Spool.open(path / "spool.db")
        head = spool.head()
        spool.close()
        if head is not None and described["rotation"]["after_seq"] is not None \
                and head.seq > described["rotation"]["after_seq"]:
            phase = "under way, handover appended"
    keys = DeviceKeys(path, kind=kind)
    agent, box = started(path, keys)   # the restart: settle, then sign what is owed
    try:
        for applied in box.unreported():
            asyncio.run(agent.answer(box, applied))
        assert box.unreported() == []
        agent.record([Record("temp", value=-1, unit="Cel")])   # the key in force signs on
        followed = follow(spooled(agent), enrolled_key)
        assert followed.ok, (phase, followed.problems)
        in_force = KeyStoreDescription.read(path / KEYSTORE_FILE)
        assert followed.keys[-1][1].kid == agent.identity.kid and in_force.public_key == agent.identity.public_key
        assert len(followed.keys) - 1 == box.last_seq   # one handover per applied rotate-key, none twice
        assert check_chain(list(followed.envelopes)).intact
    finally:
        agent.spool.close()
        if hasattr(agent.identity, "close"):
            agent.identity.close()
    return phase


def test_sigkill_anywhere_in_a_rotation_leaves_a_chain_the_enrolled_key_follows(tmp_path):
    rng, phases = random.Random(15), {}
    for attempt in range(KILLS):
        path = tmp_path / str(attempt)
        phase = rotations_killed(path, rng, lambda home: create_device_key(home, "software"), "software", (0.005, 0.08))
        phases[phase] = phases.get(phase, 0) + 1
        leftovers = {p.name for p in path.iterdir() if p.name.startswith("device.key.") or p.name == "device.key"}
        assert leftovers == {KeyStoreDescription.read(path / KEYSTORE_FILE).key_file or "device.key"}, leftovers
    assert len(phases) >= 3, f"the kills landed in too few places: {phases}"
    print(f"rotation kills: {KILLS}, {phases}")
