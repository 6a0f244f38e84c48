"""The lender's defences against an outsider, part by part: budgets, the gate, the lanes, the refusals, escaping.

The attacks themselves are played against a real `lender serve` in
tests/attacks/test_hostile_traffic.py; here each part is driven on its own
(with a fake clock where time matters) or through a lender in this process.
"""
from __future__ import annotations

import asyncio
import logging
import time

import nacl.public
import pytest
from aiocoap.numbers import codes
from hypothesis import given, settings
from hypothesis import strategies as st

from lender.coap.gate import AiocoapChatter, DatagramGate, GatePolicy, host_key
from lender.coap.limits import Budgets, Rate
from lender.coap.resource import Busy, Lane
from lender.enrollment.desk import EnrollmentDesk
from lender.enrollment.technicians import TechnicianRegistry
from lender.evidence.ingest import Ingest, NodeIngest, Status
from lender.evidence.refusals import Refusals
from lender.evidence.store import Refused
from lender.untrusted import EscapingFilter, shown
from telemetry.envelope import Reason
from telemetry.enrollment import SiteRequest, open_site
from telemetry.identity import Identity
from tests.kit.lender import Device, LenderThread, RawCoap, ack_of, batch, enroll


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- budgets and the gate ----------------------------------------------------------------------

def test_a_budget_allows_its_burst_then_its_rate_and_forgets_the_least_recent_key_first():
    clock = Clock()
    budgets = Budgets(Rate(per_s=2.0, burst=4.0), capacity=3, clock=clock)
    assert [budgets.take("a") for _ in range(5)] == [True] * 4 + [False]
    assert budgets.wait("a") == pytest.approx(0.5)
    clock.now += 1.0
    assert [budgets.take("a") for _ in range(3)] == [True, True, False]
    for key in "bcd":
        budgets.take(key)
    assert len(budgets) == 3 and budgets.wait("a") == 0.0  # "a" was forgotten: a bounded table


@settings(max_examples=200)
@given(takes=st.lists(st.tuples(st.floats(0, 2), st.sampled_from("abc")), max_size=80))
def test_no_key_ever_spends_more_than_its_burst_and_its_rate_allow(takes):
    clock = Clock()
    budgets = Budgets(Rate(per_s=5.0, burst=3.0), clock=clock)
    spent = {"a": 0, "b": 0, "c": 0}
    for pause, key in takes:
        clock.now += pause
        spent[key] += budgets.take(key)
    elapsed = clock.now - 1000.0
    assert all(count <= 3 + 5 * elapsed + 1e-9 for count in spent.values())


def test_the_gate_keeps_strangers_to_their_budget_and_a_trusted_host_to_its_own():
    clock = Clock()
    gate = DatagramGate(GatePolicy(trusted=Rate(100, 100), stranger=Rate(10, 10), strangers=Rate(15, 15)), clock=clock)
    assert sum(gate.admit("::ffff:203.0.113.9") for _ in range(50)) == 10        # one stranger: its own budget
    assert sum(gate.admit(f"::ffff:198.51.100.{n}") for n in range(20)) == 5     # all strangers: 15 in all
    gate.trust("::ffff:192.0.2.7")                                              # delivered authenticated evidence
    assert sum(gate.admit("::ffff:192.0.2.7") for _ in range(200)) == 100
    clock.now += 601.0                                                          # trust lapses after TRUST_S
    assert gate.admit("::ffff:192.0.2.7") and gate.dropped == 40 + 15 + 100
    dropped, hosts = gate.take_dropped()
    assert dropped == 155 and hosts[0][0] == "192.0.2.7"


def test_hosts_are_keyed_by_ipv4_address_or_ipv6_slash_64():
    assert host_key("::ffff:192.0.2.1") == host_key("192.0.2.1") == "192.0.2.1"
    assert host_key("2001:db8:1:2::1") == host_key("2001:db8:1:2:ffff::9")      # one subscriber's /64
    assert host_key("2001:db8:1:2::1") != host_key("2001:db8:1:3::1")
    assert host_key("not an address") == "not an address"


def test_aiocoaps_lines_about_single_datagrams_are_let_through_a_few_a_minute():
    clock = Clock()
    chatter = AiocoapChatter(clock)
    record = logging.LogRecord("coap-server", logging.WARNING, __file__, 1, "Ignoring unparsable message from %s",
                               ("x",), None)
    other = logging.LogRecord("coap-server", logging.WARNING, __file__, 1, "Something else", (), None)
    assert [chatter.filter(record) for _ in range(8)] == [True] * 5 + [False] * 3
    assert chatter.filter(other)
    clock.now += 60
    assert chatter.filter(record) and chatter.take_quieted() == 3


# --- lanes ----------------------------------------------------------------------------------------

def test_a_full_lane_answers_busy_at_once_with_a_max_age_instead_of_queueing():
    lane = Lane("test-lane", depth=2)
    release = __import__("threading").Event()

    async def run():
        held = [asyncio.ensure_future(lane.call(release.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Busy) as refused:
            await lane.call(time.sleep, 0)
        release.set()
        await asyncio.gather(*held)
        return refused.value.to_message()

    message = asyncio.run(run())
    lane.close()
    assert message.code == codes.SERVICE_UNAVAILABLE and message.opt.max_age == 5 and lane.refused == 1


def test_junk_to_n_is_answered_in_the_strangers_lane_and_the_ingest_thread_never_sees_it(data_dir, store):
    node = Device("node-1")
    enroll(store, data_dir, node)
    with LenderThread(data_dir, insecure=True) as lender:
        ingested = []
        thread = lender.server._thread
        original = thread.call

        async def counting(function, *args, **kwargs):
            ingested.append(getattr(function, "__name__", repr(function)))
            return await original(function, *args, **kwargs)

        thread.call = counting
        client = RawCoap(lender.port)
        for n in range(30):  # a stranger's junk, from one host, within its budget
            assert client.post(bytes([0xD2, n]) * 20, path=("n",)).code == codes.CHANGED
        envelope = node.next()
        assert ack_of(client.post(envelope.raw, path=("n",)).payload)[1] == [envelope.seq]
        client.close()
    assert ingested == ["_envelope"], "only the envelope a registered key signed reached the evidence's writer"


def test_unauthenticated_requests_naming_one_device_spend_its_budget_and_get_4_29_with_max_age(data_dir, store):
    node = Device("node-1")
    enroll(store, data_dir, node)
    forger = Device("node-1")  # another key, the same name
    with LenderThread(data_dir, insecure=True, gate_policy=GatePolicy(device=Rate(per_s=0.01, burst=5))) as lender:
        client = RawCoap(lender.port)
        answers = [client.post(forger.next().raw, path=("n",)) for _ in range(7)]
        client.close()
    assert [a.code for a in answers] == [codes.CHANGED] * 5 + [codes.TOO_MANY_REQUESTS] * 2
    assert answers[-1].opt.max_age >= 1 and b"node-1" in answers[-1].payload


def test_a_plain_request_that_stores_new_signed_evidence_makes_its_host_trusted_and_a_replay_does_not(
        data_dir, store):
    gateway = Device("gw-insecure")
    enroll(store, data_dir, gateway)
    with LenderThread(data_dir, insecure=True) as lender:  # the gate's own budgets: 20/s for a stranger
        client = RawCoap(lender.port, timeout=1.0, tries=1)  # a datagram the gate drops would time out
        first = batch([gateway.next()])
        client.post(first)
        for _ in range(150):  # far beyond a stranger's burst: a trusted host's budget
            envelope = gateway.next()
            assert ack_of(client.post(batch([envelope])).payload)[1] == [envelope.seq]
        client.close()
    with LenderThread(data_dir, insecure=True) as lender:  # a fresh gate: replays earn nothing
        client = RawCoap(lender.port, timeout=0.3, tries=1)
        with pytest.raises(TimeoutError):
            for _ in range(150):
                assert ack_of(client.post(first).payload)[2] == [1]  # already present
        client.close()


# --- the refusals' policy ---------------------------------------------------------------------------

def refused(n: int, *, attributable: bool = False, reason: Reason = Reason.MALFORMED) -> Refused:
    return Refused(kind="request", reason=reason, detail="junk", raw=bytes([n]) * 10, peer=f"203.0.113.{n % 7}:4000",
                   received_at=1_800_000_000.0 + n, attributable=attributable)


def test_junk_is_sampled_per_kind_and_reason_a_minute_and_what_a_key_vouches_for_is_always_offered():
    clock = Clock()
    refusals = Refusals(samples_per_minute=3, clock=clock)
    assert [refusals.keep(refused(n)) for n in range(6)] == [True] * 3 + [False] * 3
    assert refusals.keep(refused(9, reason=Reason.OVERSIZE))         # another reason: its own sample
    assert all(refusals.keep(refused(n, attributable=True)) for n in range(50))
    clock.now += 60
    assert refusals.keep(refused(7))


def test_refusal_lines_are_rate_limited_and_summed_up_by_reason_and_host(caplog):
    clock = Clock()
    refusals = Refusals(log_lines=3, log_window_s=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="lender.refusals"):
        for n in range(40):
            refusals.note("a request", f"203.0.113.{n % 2}:{4000 + n}", "malformed", "junk")
        clock.now += 61
        refusals.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[0].startswith("refused a request from 203.0.113.0:4000")
    assert "40, 37 of them not logged one by one (malformed 37); most from 203.0.113.0 (20), 203.0.113.1 (20)" \
        in lines[-1]


def test_a_node_envelope_refused_as_junk_is_screened_without_a_write_transaction(store, data_dir):
    node = Device("node-1")
    enroll(store, data_dir, node)
    screening = NodeIngest(store)
    assert screening.screen_envelope(node.next().raw, peer="x") is None  # signed by a registered key: handed on
    outcome = screening.screen_envelope(Device("node-1").next().raw, peer="x")  # another key
    assert outcome.status is Status.CHANGED and outcome.refused[0].reason is Reason.UNKNOWN_KEY
    assert Ingest(store).refuse_unvouched(b"\x80", peer="x").status is Status.CHANGED  # an empty batch


# --- escaping -----------------------------------------------------------------------------------------

@settings(max_examples=300)
@given(st.text())
def test_shown_text_is_printable_and_printable_text_is_shown_as_it_is(text):
    escaped = shown(text)
    assert escaped.isprintable()
    if text.isprintable():
        assert escaped == text


def test_a_log_line_from_an_attackers_bytes_stays_one_line():
    record = logging.LogRecord("lender", logging.INFO, __file__, 1, "refused %s", ("gw\n2026 INFO ok \x1b[32m",), None)
    EscapingFilter().filter(record)
    assert record.getMessage() == "refused gw\\n2026 INFO ok \\x1b[32m"


# --- site files ------------------------------------------------------------------------------------

@pytest.fixture
def desk(store, data_dir):
    desk = EnrollmentDesk(data_dir, store)
    desk.site_path("asset-7781").parent.mkdir(parents=True, exist_ok=True)
    desk.site_path("asset-7781").write_text('[asset]\nid = "asset-7781"\nsite = "Warehouse 3"\n')
    return desk


def site_request(technician: str, key: Identity, *, created: float | None = None, asset: str = "asset-7781"):
    response_key = nacl.public.PrivateKey.generate()
    return SiteRequest(technician, asset, int(created or time.time()), bytes(response_key.public_key)).sign(key), \
        response_key


def test_a_site_file_goes_to_a_registered_technician_sealed_to_the_requests_key(desk):
    technician = Identity.generate()
    TechnicianRegistry(desk.data_dir).add("tech-ana", technician.public_key)
    request, response_key = site_request("tech-ana", technician)
    answer = desk.site(request)
    assert answer.code == codes.CONTENT
    assert b"Warehouse" in open_site(answer.payload, response_key, desk.identity.public_key)
    assert desk.site(site_request("tech-ana", Identity.generate())[0]).code == codes.UNAUTHORIZED  # not their key
    assert desk.site(site_request("tech-bob", technician)[0]).code == codes.FORBIDDEN            # not registered
    assert desk.site(site_request("tech-ana", technician, created=time.time() - 3 * 86400)[0]).code == codes.FORBIDDEN
    assert desk.site(site_request("tech-ana", technician, asset="asset-0000")[0]).code == codes.NOT_FOUND
    assert desk.site(b"\xd2\x84junk").code == codes.BAD_REQUEST
    TechnicianRegistry(desk.data_dir).revoke("tech-ana")
    assert desk.site(site_request("tech-ana", technician)[0]).code == codes.FORBIDDEN             # revoked
