"""Helpers the tests share, imported like any module: ``from tests.kit.<part> import ...``.

    agent       build_agent(): the gateway agent wired for a test (spool, state, uplink, rules), running(), signed_envelopes()
    envelopes   real signed envelopes of a warehouse gateway, for the spool tests
    envelope_file  the pre-built envelope file a crash test's child reads (imports nothing else: it starts fast)
    health      a virtual clock, pyudev events and spool readers for the modem health monitor's tests
    lender      simulated devices, batches, a lender on 127.0.0.1, an independent CoAP client
    oscore      an OSCORE of the tests' own (cryptography): open a node's requests and the lender's answers, forge answers
    pledge      a version 2 gateway that signs like the agent, and a lender on disk that judges it (the risk tests)
    postgres    a throwaway PostgreSQL server (Debian's binaries, a temporary directory, a free port, an unprivileged user)
    stores      the lender's two store backends under one suite: another connection, a failing insert, a schema version
    workers     gateways speaking OSCORE to a lender of several workers (fault tests)
    pledged_site  real processes for the borrower's attacks: a lender serving, a gateway provisioned to it, the agent
                as a child (agentshim/: its GPIO from a file, a kernel said synced, the rig's clock shim)
    rules       synthetic sample streams and a simulated clock for the rules tests
    uplink      a stand-in lender on real UDP, a recording UDP relay, a driven clock

A child process a test starts (tests/**/*_child.py) finds this package once
the repository is on its sys.path: PYTHONPATH, or the REPO argument it inserts.
Kept free of imports, so a child that needs one small helper starts fast.
"""
