"""The outsider's attacks of issue 19, replayed against a real `pledgewatch lender serve` process: each ends well.

The lender listens on the internet for devices it cannot see. Each test
starts `lender serve` (hil.processes.LenderProcess: it logs at INFO, so every
line a refusal may write is there to read), registers honest devices
(a gateway and a node speaking OSCORE, hil.flood.HonestProbe; a node on
plain CoAP), and plays one attack the way an attacker on the network would:
hil.flood's attacker process sending from 127.0.0.2 and up, or hand-made
requests over a plain UDP socket (tests.kit.lender.RawCoap). What "ends
well" means is each test's last lines: honest devices acked throughout, the
lender's memory flat, evidence of fraud kept, the good envelopes of a
poisoned batch stored, 4.01 / 4.03 for strangers, escaped output.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import nacl.public
import pytest
from aiocoap.numbers import codes

from hil.flood import Attack, Flood, HonestProbe, ProbeDevice, rss_mb
from hil.processes import LenderProcess, run_cli
from lender.enrollment.technicians import TechnicianRegistry
from lender.evidence.log import lender_identity
from telemetry import cbor
from telemetry.cbor import Tag
from telemetry.cose import eddsa_header
from telemetry.enrollment import AssetBinding, EnrollmentBody, EnrollmentRequest, SiteRequest, open_site
from telemetry.envelope import GENESIS, seal
from telemetry.exc import EnrollmentFormatError
from telemetry.identity import Identity
from telemetry.senml import Record
from tests.kit.lender import Device, RawCoap, ack_of, batch

ASSET = "asset-7781"
SITE = '[asset]\nid = "asset-7781"\nsite = "Warehouse 3, Mombasa Road"\ngeofence = { lat = -1.3192, lon = 36.8581, radius_m = 150.0 }\n'


class Site:
    """A lender serving in its own process, with honest devices registered and a technician who may fetch sites."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lender = LenderProcess(root / "lender", log_path=root / "lender.log")
        self.gateway = ProbeDevice("gw-honest", Identity.generate(), Path(), "t")
        self.node = ProbeDevice("node-honest", Identity.generate(), Path(), "n")
        self.plain_node = Device("node-plain")
        self.technician = Identity.generate()

    def __enter__(self) -> Site:
        for device in (self.gateway, self.node):
            device.context = self.lender.register(device.name, device.identity.public_key.hex(), asset=ASSET)
        run_cli(["lender", "register", "--data", str(self.lender.data), "--device", self.plain_node.name,
                 "--public-key", self.plain_node.identity.public_key.hex(), "--no-oscore"])
        TechnicianRegistry(self.lender.data).add("tech-ana", self.technician.public_key)
        sites = self.lender.data / "enroll" / "sites"
        sites.mkdir(parents=True, exist_ok=True)
        (sites / f"{ASSET}.toml").write_text(SITE)
        self.lender.start()
        self.client = RawCoap(self.lender.port, timeout=1.0, tries=10)  # 127.0.0.1, a stranger to the gate
        return self

    def __exit__(self, *exc_info) -> None:
        self.client.close()
        self.lender.stop()

    def kid_of(self, device: ProbeDevice) -> bytes:
        """A device's OSCORE sender id: the kid its requests carry in clear, which an attacker reads off the air."""
        return bytes.fromhex(next(d for d in self.lender.devices() if d["device"] == device.name)["oscore_id_hex"])

    def quarantine_counts(self) -> dict[str, dict]:
        rows = json.loads(run_cli(["lender", "quarantine", "--data", str(self.lender.data), "--json", "--counts"]))
        return {f"{r['kind']}/{r['reason_name']}": r for r in rows}

    def quarantined(self) -> list[dict]:
        out = run_cli(["lender", "quarantine", "--data", str(self.lender.data), "--json", "--limit", "10000"])
        return [json.loads(line) for line in out.splitlines()]

    def log(self) -> str:
        return self.lender.log_path.read_text("utf-8", errors="replace")


@pytest.fixture
def site(tmp_path):
    with Site(tmp_path) as running:
        yield running


def under_flood(site: Site, flood: Flood, *, idle_s: float = 2.0) -> tuple[list, list, float]:
    """Honest devices deliver for `idle_s`, then during `flood`: (round trips before, during, RSS growth in MiB)."""
    probe = HonestProbe(site.lender.uri, [site.gateway, site.node], per_s=20.0).start()
    time.sleep(idle_s)
    before, started = rss_mb(site.lender.pid), time.time()
    flood.start()
    highest = before
    while flood.process.poll() is None:
        highest = max(highest, rss_mb(site.lender.pid))
        envelope = site.plain_node.next()  # the node on plain CoAP, from its own address, between the junk
        answer = site.client.post(envelope.raw, path=("n",))
        assert answer.code == codes.CHANGED and ack_of(answer.payload)[1] == [envelope.seq]
        time.sleep(0.5)
    flood.wait()
    ended = time.time()
    samples = probe.stop()
    return ([s for s in samples if s.at < started], [s for s in samples if started <= s.at <= ended],
            highest - before)


def test_six_seconds_of_unique_junk_to_n_neither_delays_honest_devices_nor_grows_the_lender(site):
    # once: a legitimate node's request went from 4 ms to 5.5 s and the lender from 53 MB to 159 MB
    flood = Flood(site.lender.address, seconds=6.0, rate=5000.0, sources=16, mix={Attack.NODE_JUNK: 1.0})
    idle, during, growth = under_flood(site, flood)
    assert flood.result["sent"] > 25_000
    assert idle and during and all(s.acked for s in idle + during), "every honest envelope acked, during the flood too"
    assert len(during) >= 6 * 20 * 0.5, "the honest devices kept their pace (one request in flight, 20 a second)"
    assert growth < 50, f"the lender grew by {growth:.0f} MiB"
    counts = site.quarantine_counts()["request/malformed"]
    assert counts["refused"] > 500 and counts["kept"] <= 40, counts  # sampled: 20 a minute kept, the rest counted
    assert len(site.log().splitlines()) < 300, "refusals are logged at a rate, with a summary, not one line each"


def test_oversize_datagrams_keep_a_node_envelope_at_most_and_a_signed_fork_is_still_kept(site):
    # once: 300 datagrams of 63 KiB put 16.8 MB into the quarantine in 3.8 s, each kept whole
    flood = Flood(site.lender.address, seconds=3.0, rate=100.0, sources=4, mix={Attack.OVERSIZE: 1.0})
    flood.start()
    flood.wait()
    assert flood.result["sent"] >= 295
    oversize = [q for q in site.quarantined() if q["reason_name"] == "oversize"]
    assert oversize and all(len(q["raw_b64"]) <= 4 * math.ceil(1024 / 3) for q in oversize), "at most 1 KiB each"
    assert site.quarantine_counts()["request/oversize"]["refused"] >= len(oversize)
    # evidence of fraud: the gateway's key signs a second envelope for a seq the lender holds
    honest = Device(site.gateway.name, identity=site.gateway.identity)
    first = honest.next()
    forked = seal(site.gateway.identity, device=site.gateway.name, boot=1, seq=1, prev=GENESIS,
                  records=[Record("temp", value=-40.0, unit="Cel", time=time.time())])
    answers = HonestProbe.post_once(site.lender.uri, site.gateway, [batch([first]), batch([forked])])
    assert ack_of(answers[0].payload)[1] == [1]
    (refusal,) = ack_of(answers[1].payload)[3]
    assert refusal[1] == 6  # conflict
    kept = [q for q in site.quarantined() if q["reason_name"] == "conflict"]
    assert [q["device"] for q in kept] == [site.gateway.name] and kept[0]["raw_b64"]


def test_a_poisoned_alarm_is_refused_alone_and_the_good_envelopes_of_its_batch_are_stored(site):
    # once: a NaN record time made the whole batch 5.03, forever; alarms go first, so the uplink was wedged
    honest = Device(site.gateway.name, identity=site.gateway.identity)
    good = honest.chain(3)
    poisoned = seal(site.gateway.identity, device=site.gateway.name, boot=1, seq=4, prev=honest.prev,
                    records=[Record("alarm.tamper", boolean=True, time=math.nan)])
    (answer,) = HonestProbe.post_once(site.lender.uri, site.gateway, [batch([poisoned, *good])])
    assert answer.code == codes.CHANGED
    ack = ack_of(answer.payload)
    assert ack[1] == [1, 2, 3] and [r[:2] for r in ack[3]] == [[0, 1]]
    (kept,) = [q for q in site.quarantined() if "not a finite number" in q["detail"]]
    assert kept["reason_name"] == "malformed" and kept["kind"] == "envelope"


def test_site_files_go_only_to_a_registered_technician_sealed_to_their_request(site):
    # once: GET /enroll/sites/<asset> served the address, geofence, sensors and access hours to anyone
    probe = site.client.request(b"", code=codes.GET, path=("enroll", "sites", ASSET), content_format=None)
    assert probe.code == codes.UNAUTHORIZED and b"Warehouse" not in probe.payload
    lender_key = lender_identity(site.lender.data).public_key

    def ask(technician: str, key: Identity) -> tuple:
        response_key = nacl.public.PrivateKey.generate()
        request = SiteRequest(technician, ASSET, int(time.time()), bytes(response_key.public_key)).sign(key)
        return request, response_key, site.client.post(request, path=("enroll", "sites"))

    _, _, forged = ask("tech-ana", Identity.generate())
    assert forged.code == codes.UNAUTHORIZED and b"Warehouse" not in forged.payload
    _, _, unknown = ask("tech-nobody", Identity.generate())
    assert unknown.code == codes.FORBIDDEN
    request, response_key, answer = ask("tech-ana", site.technician)
    assert answer.code == codes.CONTENT and b"Warehouse" not in answer.payload  # sealed
    assert open_site(answer.payload, response_key, lender_key).decode() == SITE
    replayed = site.client.post(request, path=("enroll", "sites"))  # a stranger replays what it saw on the wire
    with pytest.raises(EnrollmentFormatError):
        open_site(replayed.payload, nacl.public.PrivateKey.generate(), lender_key)


def test_a_device_id_with_a_newline_and_escapes_never_reaches_a_log_line_or_a_terminal_raw(site):
    # once: written raw into the lender's log (a forged "INFO ... stored" line) and into `lender quarantine`
    forged_id = "gw-1\n2026-01-05 12:00:00,000 INFO lender.evidence.ingest: stored \x1b[32mOK\x1b[0m"
    stranger = Identity.generate()
    payload = cbor.encode({1: forged_id, 2: 1, 3: 1, 4: GENESIS, 5: []})
    protected = eddsa_header(stranger.kid)
    envelope = cbor.encode(Tag(18, [protected, {}, payload, os.urandom(64)]))
    answer = site.client.post(envelope, path=("n",))
    assert answer.code == codes.CHANGED and ack_of(answer.payload)[3][0][1] == 1  # malformed: not an id
    site.lender.stop()
    log = site.log()
    assert "\x1b" not in log and "\nOK" not in log
    assert not any(line.startswith("2026-01-05 12:00:00,000 INFO") for line in log.splitlines())
    shown = run_cli(["lender", "quarantine", "--data", str(site.lender.data)])
    assert "\x1b" not in shown and "not an id" in shown
    assert all(not line.startswith("2026-01-05") for line in shown.splitlines())


def test_a_revoked_devices_original_enrollment_request_is_answered_forbidden(site):
    device = Identity.generate()
    body = EnrollmentBody("gw-revoked", "gateway", device.public_key, "tech-ana", {"imei": "867698040123450"},
                          AssetBinding("asset-9001", "Yard 2"), int(time.time()), os.urandom(16),
                          bytes(nacl.public.PrivateKey.generate().public_key))
    (site.lender.data / "enroll" / "sites" / "asset-9001.toml").write_text('[asset]\nid = "asset-9001"\n')
    request = EnrollmentRequest.create(body, device.sign).countersign(site.technician).encode()
    assert site.client.post(request, path=("enroll",)).code == codes.CREATED
    run_cli(["lender", "revoke", "--data", str(site.lender.data), "--device", "gw-revoked"])
    again = site.client.post(request, path=("enroll",))
    assert again.code == codes.FORBIDDEN and b"revoked" in again.payload
