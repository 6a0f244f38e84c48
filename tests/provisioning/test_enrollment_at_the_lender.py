"""The lender's side of enrollment: both signatures checked, retries answered the same, bad input refused."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import nacl.public
import pytest
from aiocoap.numbers import codes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lender.enrollment.desk import EnrollmentDesk
from lender.enrollment.technicians import TechnicianRegistry
from telemetry.enrollment import AssetBinding, ContextKeys, EnrollmentBody, EnrollmentRequest, EnrollmentResponse
from lender.evidence.store import SQLiteStore
from provisioning.enrollment import accept
from telemetry.identity import Identity


@pytest.fixture
def desk(tmp_path):
    with SQLiteStore.open(tmp_path / "lender") as store:
        desk = EnrollmentDesk(tmp_path / "lender", store)
        desk.site_path("asset-7781").parent.mkdir(parents=True, exist_ok=True)
        desk.site_path("asset-7781").write_text('[asset]\nid = "asset-7781"\nsite = "Warehouse 3"\n')
        yield desk


@pytest.fixture
def technician(desk):
    identity = Identity.generate()
    TechnicianRegistry(desk.data_dir).add("tech-ana", identity.public_key)
    return identity


def a_request(device_key: Identity, technician: Identity | None, *, device="gw-0001", created=None,
              response_key=None, technician_id="tech-ana") -> EnrollmentRequest:
    body = EnrollmentBody(device, "gateway", device_key.public_key, technician_id, {"imei": "867698040123450"},
                          AssetBinding("asset-7781", "Warehouse 3"), int(created or time.time()), os.urandom(16),
                          response_key)
    request = EnrollmentRequest.create(body, device_key.sign)
    return request.countersign(technician) if technician is not None else request


def test_an_enrollment_signed_by_both_returns_a_context_only_the_device_can_open(desk, technician):
    device = Identity.generate()
    response_key = nacl.public.PrivateKey.generate()
    request = a_request(device, technician, response_key=bytes(response_key.public_key))
    answer = desk.enroll(request.encode())
    assert answer.code == codes.CREATED
    response, context = accept(answer.payload, request, desk.identity.public_key, response_key)
    assert response.device == "gw-0001" and response.asset == "asset-7781"
    lender_side = desk.registry.device("gw-0001")
    assert lender_side.oscore_id == context.sender_id and lender_side.public_key == device.public_key
    stranger = nacl.public.PrivateKey.generate()
    with pytest.raises(Exception):
        ContextKeys.open(response.sealed_context, stranger)
    # the exact same request again (a lost answer): the exact same response
    assert desk.enroll(request.encode()).payload == answer.payload


def test_a_response_not_signed_by_the_pinned_lender_key_is_refused(desk, technician):
    device = Identity.generate()
    request = a_request(device, technician)
    answer = desk.enroll(request.encode())
    impostor = Identity.generate()
    forged = EnrollmentResponse("gw-0001", request.digest, int(time.time()), "asset-7781").sign(impostor)
    from provisioning.exc import EnrollmentResponseError
    with pytest.raises(EnrollmentResponseError, match="not from the pinned lender key"):
        accept(forged, request, desk.identity.public_key, None)
    with pytest.raises(EnrollmentResponseError, match="answers another request"):
        accept(answer.payload, a_request(device, technician), desk.identity.public_key, None)


@pytest.mark.parametrize("case, code, text", [
    ("no countersignature", codes.UNAUTHORIZED, "not countersigned by a technician"),
    ("wrong technician key", codes.UNAUTHORIZED, "technician signature does not verify"),
    ("unknown technician", codes.FORBIDDEN, "technician tech-zed is not registered"),
    ("forged device signature", codes.UNAUTHORIZED, "device signature does not verify"),
    ("too old", codes.FORBIDDEN, "outside the 30-day window"),
])
def test_requests_the_lender_must_refuse_register_nothing(desk, technician, case, code, text):
    device = Identity.generate()
    if case == "no countersignature":
        request = a_request(device, None)
    elif case == "wrong technician key":
        request = a_request(device, Identity.generate())
    elif case == "unknown technician":
        request = a_request(device, technician, technician_id="tech-zed")
    elif case == "forged device signature":
        good = a_request(device, technician)
        request = EnrollmentRequest(good.payload, bytes(64), good.technician_signature, good.technician_kid)
    else:
        request = a_request(device, technician, created=time.time() - 31 * 86400)
    answer = desk.enroll(request.encode())
    assert answer.code == code and text in answer.text
    assert desk.registry.devices() == []
    assert not (desk.data_dir / "oscore" / "gw-0001").exists()


def test_a_device_id_taken_by_another_key_is_a_conflict(desk, technician):
    assert desk.enroll(a_request(Identity.generate(), technician).encode()).code == codes.CREATED
    answer = desk.enroll(a_request(Identity.generate(), technician).encode())
    assert answer.code == codes.CONFLICT and "enrolled already" in answer.text


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])  # refusals change nothing
@given(st.binary(max_size=600))
def test_garbage_is_refused_with_a_reason_and_never_raises(desk, data):
    answer = desk.enroll(data)
    assert answer.code in (codes.BAD_REQUEST, codes.UNAUTHORIZED, codes.FORBIDDEN)
    assert desk.report(data).code in (codes.BAD_REQUEST, codes.UNAUTHORIZED, codes.FORBIDDEN)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_valid_request_with_any_byte_flipped_is_refused(desk, technician, data):
    request = a_request(Identity.generate(), technician).encode()
    index = data.draw(st.integers(0, len(request) - 1))
    flipped = bytearray(request)
    flipped[index] ^= data.draw(st.integers(1, 255))
    assert desk.enroll(bytes(flipped)).code != codes.CREATED
    assert desk.registry.devices() == []


def test_lender_technicians_add_list_revoke_from_the_command_line(tmp_path):
    key = Identity.generate().public_key.hex()
    run = lambda *args: subprocess.run([sys.executable, "-m", "pledgewatch", "lender", "technicians", *args,  # noqa
                                        "--data", str(tmp_path / "lender")], capture_output=True, text=True)
    added = run("add", "--id", "tech-ana", "--public-key", key, "--name", "Ana")
    assert added.returncode == 0 and "registered technician tech-ana" in added.stdout
    assert "pledgewatch provision technician init --lender-key" in added.stdout
    again = run("add", "--id", "tech-ana", "--public-key", key)
    assert again.returncode == 1 and "registered already" in again.stderr
    assert run("revoke", "--id", "tech-ana").returncode == 0
    listed = run("list")
    assert "tech-ana" in listed.stdout and "revoked" in listed.stdout
    assert oct((tmp_path / "lender" / "enroll" / "technicians.json").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "lender" / "enroll" / "lender.key").stat().st_mode & 0o777) == "0o600"
