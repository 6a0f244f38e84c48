"""Applies a generated sequence of lender commands to the node's command state, for tests/firmware/test_node_commands.py.

    MICROPYPATH=firmware/tests/fakes:firmware/src/lib:firmware/src micropython -X heapsize=128k \
        firmware/tests/drive_commands.py < plan.json

The plan: {"root", "device", "lender_key" (hex), "now", "steps": [{"restart": true} | {"command": hex, "cut": bool}]}.
Each command goes through commands.receive as the cycle hands it over; "cut" tears the state save in the middle
(a power cut during the apply) and restarts; "restart" reloads the state from flash. Prints one JSON line:
{"results": [the seq applied at each step, or null], "last_seq": the last applied seq in flash at the end}.
"""

import binascii
import json
import sys

import cmdstate
import commands

plan = json.loads(sys.stdin.read())
PATH = plan["root"] + "/commands.bin"


class Config:
    device = plan["device"]
    lender_key = binascii.unhexlify(plan["lender_key"])


class State:
    token = None


class Node:
    config, state = Config(), State()


class Cut(Exception):
    pass


def torn_open(keep):
    real = open

    class Torn:
        def __init__(self, path, mode):
            self.file = real(path, mode)

        def seek(self, where):
            self.file.seek(where)

        def write(self, data):
            self.file.write(data[: keep % (len(data) + 1)])
            raise Cut()

        def __enter__(self):
            return self

        def __exit__(self, *info):
            self.file.close()

    return Torn


commands.unix_time = lambda: plan["now"]
node = Node()
state = cmdstate.CommandState(PATH)
results = []
for step in plan["steps"]:
    if step.get("restart"):
        state = cmdstate.CommandState(PATH)
        results.append(None)
        continue
    raw = binascii.unhexlify(step["command"])
    before = state.last_seq
    if step["cut"]:
        cmdstate.open = torn_open(len(raw) * 31 + before)
        try:
            commands.receive(node, state, raw)
        except Cut:
            pass
        del cmdstate.open
        state = cmdstate.CommandState(PATH)  # the power came back
        results.append(state.last_seq if state.last_seq != before else None)
        continue
    result = commands.receive(node, state, raw)
    results.append(result.get("seq"))
print(json.dumps({"results": results, "last_seq": cmdstate.CommandState(PATH).last_seq}))
