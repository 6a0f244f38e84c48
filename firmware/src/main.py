"""The node's entry point: MicroPython runs this after boot.py at every start and every wake from deep sleep."""

import node

node.main()
