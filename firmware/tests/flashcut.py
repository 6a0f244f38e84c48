"""Power cuts at a write to flash, for the node cycle harness (tests only): the n-th write under the node's root is
torn (a random prefix, or `torn_bytes`, reaches the file) and the power fails (`cut`, a BaseException)."""

import builtins
import os


class Flash:
    """Wraps builtins.open: counts writes to files under root and cuts the power at the armed one."""

    def __init__(self, root, cut):
        self.root = root
        self.cut = cut
        self.real_open = builtins.open
        self.writes = 0
        self.cut_at = None
        self.torn_bytes = None

    def arm(self, cut_at, torn_bytes=None):
        """A new cycle: count from 0, cut at write cut_at (None: never)."""
        self.writes = 0
        self.cut_at = cut_at
        self.torn_bytes = torn_bytes

    def open(self, path, mode="r", *args):
        handle = self.real_open(path, mode, *args)
        if isinstance(path, str) and path.startswith(self.root) and ("w" in mode or "a" in mode or "+" in mode):
            return FlashFile(self, handle)
        return handle


class FlashFile:
    def __init__(self, flash, handle):
        self.flash = flash
        self.handle = handle

    def write(self, data):
        flash = self.flash
        flash.writes += 1
        if flash.writes == flash.cut_at:
            keep = flash.torn_bytes if flash.torn_bytes is not None else os.urandom(2)[0] % (len(data) + 1)
            self.handle.write(data[:keep])
            self.handle.close()
            raise flash.cut()
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.close()


def install(root, cut):
    flash = Flash(root, cut)
    builtins.open = flash.open
    return flash
