"""Runs the firmware test suite under MicroPython: every test_* function of every test_*.py module beside this file.

    MICROPYPATH=firmware/tests/fakes:firmware/src/lib:firmware/src \
        micropython -X heapsize=128k firmware/tests/run.py [-v] [--heap] [--suite=NAME] [SUBSTRING ...]

Prints each failure with its traceback, then a last line "N passed, N failed",
and exits non-zero if any test failed or none ran. SUBSTRING arguments keep
only the tests whose "module.function" contains one of them; -v names every
passing test, --heap prints the heap in use before each test. --suite=NAME
runs the NAME_*.py modules instead of test_*.py: a second suite in its own
process, so its identifiers (interned for good in MicroPython's qstr pools,
which grow by doubling) do not crowd the 128 KB heap of the first. The
commands suite (commands_*.py: the lender's signed commands on the node) is
run so by tests/firmware/test_node_commands.py.
"""

import gc
import os
import sys


FIRST = ("test_vectors",)


def _directory_of(path):
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "."


def main(argv):
    verbose = "-v" in argv
    show_heap = "--heap" in argv
    selected = [arg for arg in argv if not arg.startswith("-")]
    prefix = "test_"
    for arg in argv:
        if arg.startswith("--suite="):
            prefix = arg[len("--suite="):] + "_"
    here = _directory_of(sys.argv[0])
    names = sorted(name[:-3] for name in os.listdir(here) if name.startswith(prefix) and name.endswith(".py"))
    # The modules that need the largest free blocks run first, on the heap the fewest interned names (qstrs, kept
    # for good) have crowded: the shared vectors (every envelope signed again, files of up to 5 KB read).
    names.sort(key=lambda name: name not in FIRST)
    passed = failed = 0
    resident = set(sys.modules)
    for name in names:
        # Forget what the previous test module imported (firmware modules included), so each
        # module has the device-sized heap to itself, as each phase of the node's cycle does.
        for loaded in [loaded for loaded in sys.modules if loaded not in resident]:
            del sys.modules[loaded]
        gc.collect()
        try:
            module = __import__(name)
        except Exception as error:
            failed += 1
            print("ERROR importing %s:" % name)
            sys.print_exception(error)
            continue
        for attribute in sorted(dir(module)):
            test = getattr(module, attribute)
            full_name = name + "." + attribute
            if not attribute.startswith("test_") or not callable(test):
                continue
            if selected and not any(part in full_name for part in selected):
                continue
            gc.collect()
            if show_heap:
                print("heap %6d used %6d free  %s" % (gc.mem_alloc(), gc.mem_free(), full_name))
            try:
                test()
            except Exception as error:
                failed += 1
                print("FAIL %s" % full_name)
                sys.print_exception(error)
            else:
                passed += 1
                if verbose:
                    print("ok   %s" % full_name)
        del module, test
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


sys.exit(main(sys.argv[1:]))
