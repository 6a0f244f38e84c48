"""Assertion helpers for the firmware tests (MicroPython has no unittest or pytest)."""

import binascii


def unhex(text):
    return binascii.unhexlify(text.replace(" ", ""))


def tohex(data):
    return binascii.hexlify(data).decode()


def equal(actual, expected, what=""):
    if actual != expected:
        raise AssertionError("%s\n  got      %r\n  expected %r" % (what, actual, expected))


def raises(error_type, function, *args, **kwargs):
    """Call function and return the error_type it raises; fail if it raises nothing or something else."""
    try:
        function(*args, **kwargs)
    except error_type as error:
        return error
    raise AssertionError("%s did not raise %s" % (getattr(function, "__name__", function), error_type.__name__))


def fresh_dir(tag):
    """An empty directory under /tmp for one test's flash files (the unix port's filesystem stands in for littlefs)."""
    import os

    path = "/tmp/pw-fw-%s-%s" % (tag, binascii.hexlify(os.urandom(6)).decode())
    os.mkdir(path)
    return path
