"""`python -m bench firmware`: the node firmware's signing cost under the MicroPython unix port.

The firmware modules are compiled with mpy-cross (-march=host), as they are
deployed, and run by the MicroPython unix port that the tests use.

* sign_ms: median time of one Ed25519 signature over a typical node report's
  Sig_structure (temperature + tamper + battery, version 3: counters, lender
  token, enrollment binding, the readings as the node readings map);
  seal_ms: the whole envelope (readings, CBOR, signature, COSE framing).
* report_enrolled_bytes: that envelope as an enrolled node sends it in the
  steady state (token and binding included); report_first_after_boot_bytes:
  the first one after a start, which also declares device.heartbeat_s;
  report_enrolled_bytes_v2: the same report as a version 2 envelope (SenML
  pack), as nodes signed it before version 3.
* sign_peak_heap_kb: the smallest `-X heapsize` in which the node imports its
  signer, loads its key and seals that report: the heap signing needs at its
  peak, found by bisection, fragmentation included. sign_resident_heap_kb is
  the part in use before the signature starts (code, tables, key), and
  sign_transient_heap_kb the rest. Objects on this 64-bit host are up to twice
  their size on a 32-bit ESP32 or RP2040, so these figures are upper bounds.

* oscore_protect_ms: median time to protect a typical report's request
  with OSCORE (firmware oscore: AES-CCM-16-64-128 on cryptolib; the plaintext
  is the inner POST /n with the enrolled report, ~172 bytes; the sequence
  number reserved already, so no flash write is timed); oscore_derive_ms the
  key derivation (HKDF-SHA256 over hashlib) a cycle does once.

From real node cycles (firmware/tests/node_cycles.py on the fake board, the
modules as .mpy) against the simulated modems (hil.sim.models) whose UDP
sockets reach a real lender (lender.server, node resource /n) on 127.0.0.1.
The node as it ships: OSCORE (its context made at registration, its
node.oscore written as provisioning writes it), enrolled (the binding in
node.json and at the lender), Release Assistance on:

* report_coap_bytes_oscore: the whole OSCORE-protected CoAP message of a
  typical steady-state report (temperature + tamper + battery, device id
  "yard-17", times, counters, lender token, binding), as the simulated BC66
  put it on the wire.
* at_round_trips_per_report: AT commands the simulated modem received during
  one steady-state cycle (a wake from deep sleep, modem set up already, one
  envelope to send, Release Assistance included), the worst of the three
  models; per model in at_round_trips_by_model, and the one-time setup after
  power-on in at_round_trips_power_on_by_model.
* radio_on_s_per_report_rai / radio_on_s_per_report_no_rai: seconds the
  simulated radio connection (hil.sim.models.nbiot: RRC with a 20 s
  inactivity timer) stayed up for one steady-state report, the same node in
  the same run, with Release Assistance and with it turned off
  ("modem": {"rai": false}); the worst of the three models, per model in
  radio_on_s_by_model. On loopback the exchange itself takes milliseconds,
  so the figure with RAI is that, and the one without it is the timer.
* cycle_peak_heap_kb: the smallest -X heapsize in which that node's
  power-on cycle and a steady-state cycle both complete (by bisection; host
  objects, test fakes and harness included, so an upper bound for a
  device); cycle_heap_kb the same for a node run with "insecure": true (plain
  CoAP: no OSCORE code loaded), so the difference is what OSCORE costs.

And, from a node run with "insecure": true and registered by hand (no
binding), as before OSCORE: report_payload_bytes, the CoAP payload of the
typical steady-state report (the envelope alone), and report_datagram_bytes,
the whole plain CoAP message.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "firmware" / "src" / "lib"
FAKES = ROOT / "firmware" / "tests" / "fakes"
HARNESS = ROOT / "firmware" / "tests" / "node_cycles.py"
NODE_DEVICE = "yard-17"

_REPORT = """
import envelope, ed25519, cbor
key = ed25519.SigningKey(bytes(range(32)))
T = 1767229200
RECORDS = [
    {"name": "temp", "value": 4.5, "unit": "Cel", "time": T},
    {"name": "tamper", "boolean": False, "time": T},
    {"name": "batt", "value": 3.599609375, "unit": "V", "time": T},  # 3.6 V as the node rounds it (half float)
]
PREV = bytes(16)
V2 = {"counters": {"alarms": 2, "gaps": 1}, "token": bytes(range(12)), "binding": bytes(range(8))}
V3 = dict(V2, compact=True)  # what the node signs: version 3
HEARTBEAT = {"name": "device.heartbeat_s", "value": 900, "unit": "s", "time": T}
"""

_PROTECT = """
import binascii, time, coap, oscore, oscorekeys
path = PATH
start = time.ticks_us()
keys = oscorekeys.load(path)
derive_us = time.ticks_diff(time.ticks_us(), start)
context = oscore.Context(path, keys)
context.next_seq, context.limit = 1000, 10 ** 9  # reserved already: no flash write timed
inner = coap.request(coap.POST, 0, b"", "n", bytes(166), coap.CBOR)  # the enrolled typical report is 166 bytes
plain = coap.encode(inner)
plain[3] = coap.POST
samples = []
for _ in range(101):
    start = time.ticks_us()
    context.protect(memoryview(plain)[3:])
    samples.append(time.ticks_diff(time.ticks_us(), start))
samples.sort()
print(samples[50] / 1000, derive_us / 1000, len(plain) - 3)
"""

_TIMING = _REPORT + """
import time
protected = cbor.encode({1: -8, 4: envelope.kid_of(key.public_key)})
payload = cbor.encode({1: "node-bench-0001", 2: 3, 3: 41, 4: PREV, 5: envelope.readings(RECORDS),
                       8: 3, 9: [2, 1], 10: V2["token"], 11: V2["binding"]})  # == the version 3 seal's
message = envelope.sig_structure(protected, payload)
def median_ms(action, count):
    samples = []
    for _ in range(count):
        start = time.ticks_us()
        action()
        samples.append(time.ticks_diff(time.ticks_us(), start))
    samples.sort()
    return samples[count // 2] / 1000
sign_ms = median_ms(lambda: key.sign(message), 41)
seal_ms = median_ms(lambda: envelope.seal(key, "node-bench-0001", 3, 41, PREV, RECORDS, **V3), 41)
report = envelope.seal(key, "yard-17", 3, 41, PREV, RECORDS, **V3)
first = envelope.seal(key, "yard-17", 3, 41, PREV, RECORDS + [HEARTBEAT], **V3)
report_v2 = envelope.seal(key, "yard-17", 3, 41, PREV, RECORDS, **V2)
assert cbor.decode(cbor.decode(report).value[2])[8] == 3  # version 3, as the node signs
print(sign_ms, seal_ms, len(message), len(report), len(first), len(report_v2))
"""

_HEAP = _REPORT + """
import gc
gc.collect()
resident = gc.mem_alloc()
envelope.seal(key, "node-bench-0001", 3, 41, PREV, RECORDS, **V3)
print(resident)
"""


def _micropython() -> str:
    return str(Path(sys.executable).parent / "micropython")


def _compile(target: Path) -> None:
    (target / "probe_timing.py").write_text(_TIMING)
    (target / "probe_heap.py").write_text(_HEAP)
    for source in [*sorted(LIB.glob("*.py")), target / "probe_timing.py", target / "probe_heap.py"]:
        subprocess.run(
            [str(Path(sys.executable).parent / "mpy-cross"), "-march=host", "-o", str(target / (source.stem + ".mpy")), str(source)],
            check=True, capture_output=True,
        )
    (target / "probe_timing.py").unlink()
    (target / "probe_heap.py").unlink()


def _oscore_timing(modules: Path) -> tuple[float, float, int]:
    """(ms to protect the typical report, ms to derive the keys, plaintext bytes), under MicroPython."""
    from durable.oscore import ContextParameters
    from provisioning.node import node_context_file

    context = modules / "node.oscore"
    context.write_bytes(node_context_file(ContextParameters.generate(b"\x01", b"")))
    (modules / "probe_protect.py").write_text(_PROTECT.replace("PATH", repr(str(context))))
    subprocess.run([str(Path(sys.executable).parent / "mpy-cross"), "-march=host", "-o",
                    str(modules / "probe_protect.mpy"), str(modules / "probe_protect.py")], check=True, capture_output=True)
    (modules / "probe_protect.py").unlink()
    result = _run("probe_protect", modules, 256)
    if result.returncode != 0:
        raise RuntimeError(f"OSCORE timing failed:\n{result.stdout}{result.stderr}")
    protect_ms, derive_ms, plain_bytes = result.stdout.split()
    return float(protect_ms), float(derive_ms), int(plain_bytes)


def _run(probe: str, modules: Path, heap_kb: int) -> subprocess.CompletedProcess:
    """Run a compiled probe module (so its own source is never compiled inside the measured heap)."""
    return subprocess.run(
        [_micropython(), "-X", f"heapsize={heap_kb}k", "-m", probe],
        env=dict(os.environ, MICROPYPATH=str(modules)), capture_output=True, text=True, timeout=120,
    )


def _smallest_heap_kb(modules: Path) -> tuple[int, int]:
    """(smallest heap in KB that seals a report, bytes in use just before signing at that size)."""
    low, high = 4, 256  # low fails, high succeeds
    top = _run("probe_heap", modules, high)
    if top.returncode != 0:
        raise RuntimeError(f"sealing fails even in a {high} KB heap:\n{top.stdout}{top.stderr}")
    while high - low > 1:
        middle = (low + high) // 2
        if _run("probe_heap", modules, middle).returncode == 0:
            high = middle
        else:
            low = middle
    resident = int(_run("probe_heap", modules, high).stdout.split()[-1])
    return high, resident


def _compile_node(target: Path) -> None:
    for source in [*sorted(LIB.glob("*.py")), *sorted(FAKES.glob("*.py")), HARNESS]:
        subprocess.run(
            [str(Path(sys.executable).parent / "mpy-cross"), "-march=host", "-o", str(target / (source.stem + ".mpy")), str(source)],
            check=True, capture_output=True,
        )
    (target / "run_cycles.py").write_text("import node_cycles\n")


class _Lender:
    """The real lender on 127.0.0.1 (port chosen by the kernel) in an event-loop thread."""

    def __init__(self, data_dir: Path) -> None:
        from lender.server import LenderServer

        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = LenderServer(data_dir, bind=("127.0.0.1", 0))

    def __enter__(self) -> _Lender:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        self.port = self.server.address[1]
        return self

    def __exit__(self, *exc_info) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _provision(root: Path, model: str, port: int, seed: bytes, device: str = NODE_DEVICE, *, context=None,
               binding: bytes | None = None) -> None:
    """node.json and node.key (and node.oscore with `context`, else "insecure": true) as provisioning writes them."""
    from provisioning.node import NODE_CONTEXT, node_context_file

    root.mkdir(parents=True, exist_ok=True)
    config = {
        "device": device, "interval_s": 900,
        "lender": {"host": "127.0.0.1", "port": port, "path": "n"},
        "modem": {"model": model, "reset_pin": 5, "timeout_ms": 2000, "network_timeout_ms": 5000,
                  "psm": {"tau": "00111000", "active": "00000001"}},
        "coap": {"ack_timeout_ms": 2000, "max_retransmit": 4},
        # the typical report: temperature, tamper switch, battery (no accelerometer)
        "sensors": {"onewire_pin": 13, "tamper_pin": 4, "battery_adc_pin": 34},
    }
    if context is None:
        config["insecure"] = True
    else:
        (root / NODE_CONTEXT).write_bytes(node_context_file(context))
    if binding is not None:
        config["binding"] = binding.hex()
    (root / "node.json").write_text(json.dumps(config))
    (root / "node.key").write_bytes(seed)


def _register(lender: _Lender, device: str, seed: bytes, *, oscore: bool):
    """Register a node at the lender; its OSCORE context's node side when `oscore`."""
    import nacl.signing

    from durable.oscore import read_parameters
    from lender.enrollment import registration
    from lender.evidence.store import SQLiteStore

    with SQLiteStore.open(lender.data_dir) as store:
        registration.register(store, lender.data_dir, device, bytes(nacl.signing.SigningKey(seed).verify_key),
                              with_oscore=oscore)
    return read_parameters(lender.data_dir / registration.DEVICE_CONTEXTS_DIR / device) if oscore else None


def _cycle(modules: Path, root: Path, uart: str, cycle: dict, heap_kb: int = 128) -> dict | None:
    """Run one cycle under MicroPython; its result, or None if it did not complete (e.g. out of heap)."""
    result = subprocess.run(
        [_micropython(), "-X", f"heapsize={heap_kb}k", str(modules / "run_cycles.py")],
        input=json.dumps({"root": str(root), "cycles": [cycle]}), capture_output=True, text=True, timeout=120,
        env=dict(os.environ, MICROPYPATH=str(modules), PLEDGEWATCH_UART1=uart),
    )
    lines = [line[6:] for line in result.stdout.splitlines() if line.startswith("CYCLE ")]
    if result.returncode != 0 or len(lines) != 1:
        return None
    outcome = json.loads(lines[0])
    report = outcome["report"]
    if report is None or report.get("errors") or report.get("acked") != [report.get("seq")]:
        return None
    return outcome


def measure_cycles() -> dict:
    """Bytes, AT round trips, radio time and heap per report, from real cycles against each simulated modem."""
    import aiocoap

    from hil.sim.models import bc66, nbiot, sim7080g
    from hil.sim.modem import ModemSimulator
    from lender.evidence.store import SQLiteStore
    from telemetry.enrollment import binding_of

    models = {"bc66": bc66.MODEL, "bc95": bc66.BC95, "sim7080g": sim7080g.MODEL}
    power_on, steady, radio, coap_bytes, payloads, datagrams = {}, {}, {}, {}, {}, {}
    heap_kb = peak_kb = None
    with tempfile.TemporaryDirectory(prefix="pledgewatch-firmware-cycle-") as folder:
        work = Path(folder)
        modules = work / "mpy"
        modules.mkdir()
        _compile_node(modules)
        for name, model in models.items():
            with _Lender(work / f"lender-{name}") as lender:
                # the node as it ships: OSCORE, enrolled (bound), Release Assistance on
                seed = os.urandom(32)
                context = _register(lender, NODE_DEVICE, seed, oscore=True)
                import nacl.signing

                binding = binding_of(os.urandom(32), bytes(nacl.signing.SigningKey(seed).verify_key), "asset-bench")
                with SQLiteStore.open(lender.data_dir) as store:
                    store.bind(NODE_DEVICE, binding)
                root = work / f"node-{name}"
                _provision(root, name, lender.port, seed, context=context, binding=binding)
                with ModemSimulator(model) as sim:
                    rrc = nbiot.link(sim).rrc
                    rrc.inactivity_s = 20.0
                    if _cycle(modules, root, sim.path, {"reset_cause": 1}) is None:
                        raise RuntimeError(f"the power-on cycle against the simulated {name} failed")
                    power_on[name] = len(sim.commands())
                    sim.clear_received()
                    before = rrc.radio_on_s()
                    if _cycle(modules, root, sim.path, {"reset_cause": 4}) is None:
                        raise RuntimeError(f"the steady-state cycle against the simulated {name} failed")
                    with_rai = rrc.radio_on_s() - before
                    steady[name] = len(sim.commands())
                    coap_bytes[name] = len(nbiot.link(sim).sent()[-1])
                    # the same node re-provisioned without Release Assistance: a start (which sets the module
                    # up again), then the steady-state report measured, its connection on the 20 s timer
                    config = json.loads((root / "node.json").read_text())
                    config["modem"]["rai"] = False
                    (root / "node.json").write_text(json.dumps(config))
                    if _cycle(modules, root, sim.path, {"reset_cause": 1}) is None:
                        raise RuntimeError(f"the power-on cycle without RAI against the simulated {name} failed")
                    rrc.expire()  # the start's connection runs out before the next wake
                    before = rrc.radio_on_s()
                    if _cycle(modules, root, sim.path, {"reset_cause": 4}) is None:
                        raise RuntimeError(f"the steady-state cycle without RAI against the simulated {name} failed")
                    radio[name] = {"rai": round(with_rai, 3), "no_rai": round(rrc.radio_on_s() - before, 3)}
                    if name == "bc66":
                        peak_kb = _smallest_cycle_heap(modules, work, sim.path, lender, oscore=True)
            with _Lender(work / f"plain-lender-{name}") as lender:
                # as before OSCORE: a node registered by hand, plain CoAP
                seed = os.urandom(32)
                _register(lender, NODE_DEVICE, seed, oscore=False)
                root = work / f"plain-{name}"
                _provision(root, name, lender.port, seed)
                with ModemSimulator(model) as sim:
                    if _cycle(modules, root, sim.path, {"reset_cause": 1}) is None:
                        raise RuntimeError(f"the plain power-on cycle against the simulated {name} failed")
                    if _cycle(modules, root, sim.path, {"reset_cause": 4}) is None:
                        raise RuntimeError(f"the plain steady-state cycle against the simulated {name} failed")
                    last = aiocoap.Message.decode(nbiot.link(sim).sent()[-1])
                    payloads[name], datagrams[name] = len(last.payload), len(nbiot.link(sim).sent()[-1])
                    if name == "bc66":
                        heap_kb = _smallest_cycle_heap(modules, work, sim.path, lender, oscore=False)
    if len(set(payloads.values())) != 1 or len(set(coap_bytes.values())) != 1:
        raise RuntimeError(f"the same report made different messages per modem: {payloads} {coap_bytes}")
    return {
        "report_payload_bytes": payloads["bc66"],
        "report_datagram_bytes": datagrams["bc66"],
        "report_coap_bytes_oscore": coap_bytes["bc66"],
        "at_round_trips_per_report": max(steady.values()),
        "at_round_trips_by_model": steady,
        "at_round_trips_power_on_by_model": power_on,
        "radio_on_s_per_report_rai": max(r["rai"] for r in radio.values()),
        "radio_on_s_per_report_no_rai": max(r["no_rai"] for r in radio.values()),
        "radio_on_s_by_model": radio,
        "cycle_heap_kb": heap_kb,
        "cycle_peak_heap_kb": peak_kb,
    }


def _smallest_cycle_heap(modules: Path, work: Path, uart: str, lender: _Lender, *, oscore: bool) -> int:
    """The smallest heap (KB) in which a fresh node's power-on cycle and a steady-state cycle complete."""
    def fits(heap_kb: int) -> bool:
        # A node of its own per probe (device, key, context), so no probe's seqs meet another's at the lender.
        device, seed = f"heap-{'oscore' if oscore else 'plain'}-{heap_kb}", os.urandom(32)
        context = _register(lender, device, seed, oscore=oscore)
        root = work / device
        _provision(root, "bc66", lender.port, seed, device, context=context)
        return all(_cycle(modules, root, uart, {"reset_cause": cause}, heap_kb) is not None for cause in (1, 4))
    low, high = 48, 256
    if not fits(high):
        raise RuntimeError(f"a node cycle does not complete even in {high} KB")
    while high - low > 2:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high


def measure() -> dict:
    with tempfile.TemporaryDirectory(prefix="pledgewatch-firmware-") as folder:
        modules = Path(folder)
        _compile(modules)
        timing = _run("probe_timing", modules, 256)
        if timing.returncode != 0:
            raise RuntimeError(f"timing run failed:\n{timing.stdout}{timing.stderr}")
        sign_ms, seal_ms, message_bytes, report_bytes, first_bytes, report_v2_bytes = timing.stdout.split()
        peak_kb, resident = _smallest_heap_kb(modules)
        protect_ms, derive_ms, plain_bytes = _oscore_timing(modules)
    version = subprocess.run(
        [_micropython(), "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "sign_ms": round(float(sign_ms), 2),
        "seal_ms": round(float(seal_ms), 2),
        "signed_message_bytes": int(message_bytes),
        "report_enrolled_bytes": int(report_bytes),
        "report_first_after_boot_bytes": int(first_bytes),
        "report_enrolled_bytes_v2": int(report_v2_bytes),
        "sign_peak_heap_kb": peak_kb,
        "sign_resident_heap_kb": round(resident / 1024, 1),
        "sign_transient_heap_kb": round(peak_kb - resident / 1024, 1),
        "oscore_protect_ms": round(protect_ms, 3),
        "oscore_derive_ms": round(derive_ms, 3),
        "oscore_plaintext_bytes": plain_bytes,
        "runtime": f"MicroPython unix port {version}, modules as .mpy",
        **measure_cycles(),
    }


def main() -> None:
    print(json.dumps(measure()))


if __name__ == "__main__":
    main()
