"""Runs first at every start of the node: only what must precede main.py, and the REPL lock.

On a node provisioning locked (``node.locked``, written as its last step),
`lock.hold` never returns: it disables Ctrl-C and runs the node's program in a
loop, so neither the friendly nor the raw REPL (a soft reset in the raw REPL
runs boot.py) is ever reached (lib/lock.py, docs/firmware.md). On an unlocked
node it returns at once and main.py starts the node's work as before
(MicroPython turns Ctrl-C back on for main.py).
"""

import micropython

micropython.kbd_intr(-1)  # first thing: Ctrl-C is an ordinary byte from here on (docs/firmware.md, the lock's window)

import gc  # noqa: E402
import sys  # noqa: E402

import lock  # noqa: E402


def _node():
    import node

    node.main()


lock.hold(_node)
del sys.modules["lock"], lock, _node, micropython  # an unlocked node's cycle carries none of it
gc.collect()
