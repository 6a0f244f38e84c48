"""The node's commands against the shared vectors (its own module: each test module is compiled on the 128 KB heap).

ack-node-command is the lender's ack carrying an inspection (ack key 7);
envelope-node-inspect-answer is what the node signs at its next wake. The
node parses the one, verifies and applies its command, and its owed records,
after the same readings, make exactly the other.
"""

import cmdstate
import commands
import ed25519
import envelope  # at import, on the cleanest heap this module gets (it signs with it last)
from check import equal, fresh_dir, tohex, unhex


class _Config:
    device = lender_key = None


class _State:
    token = None


class _Node:
    def __init__(self):
        self.config, self.state = _Config(), _State()


VECTORS = __file__[: __file__.rfind("/")] + "/../../tests/vectors"  # as test_vectors finds them


def _vector(name):
    import json

    with open("%s/%s.json" % (VECTORS, name)) as file:
        description = json.load(file)
    with open("%s/%s.cbor" % (VECTORS, name), "rb") as file:
        return description, file.read()


def test_the_node_applies_the_vector_ack_command_and_signs_the_vector_answer_byte_for_byte():
    from ack import parse_ack

    description, raw = _vector("ack-node-command")
    ack = parse_ack(raw)
    del raw
    equal(tohex(ack.command), description["command_hex"])
    root = fresh_dir("cmdv")
    node, state = _Node(), cmdstate.CommandState(root + "/commands.bin")
    node.config.device = description["command"]["device"]
    node.config.lender_key = unhex(description["public_key_hex"])
    saved = commands.unix_time
    commands.unix_time = lambda: description["command"]["issued"] + 10
    try:
        result = commands.receive(node, state, ack.command)
    finally:
        commands.unix_time = saved
    equal(result, {"seq": 1, "kind": "inspect", "outcome": "applied"})
    equal(tohex(state.records()[2]["data"]), description["command"]["digest_hex"])
    answer, expected = _vector("envelope-node-inspect-answer")
    readings = [dict(r) for r in answer["records"][:3]]
    when = readings[0]["time"]
    owed = state.records()
    for record in owed:
        record["time"] = when
    del ack, parse_ack

    key = ed25519.SigningKey(unhex(answer["seed_hex"]))
    sealed = envelope.seal(key, answer["device"], answer["boot"], answer["seq"], unhex(answer["prev_hex"]),
                           readings + owed, counters=answer["counters"], token=unhex(answer["token_hex"]),
                           binding=unhex(answer["binding_hex"]), compact=True)
    equal(tohex(sealed), tohex(expected), "the node's answer, as the shared vector")
