"""Runs first at every start of the node: only what must precede main.py (no network, no sensors, no REPL changes).

The node's work (and its watchdog) starts in main.py; keeping boot.py empty
of logic means a bad boot.py can never lock a node out of its REPL.
"""

import gc

gc.collect()
