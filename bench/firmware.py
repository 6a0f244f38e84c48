"""`python -m bench firmware`: the node firmware's signing cost under the MicroPython unix port.

The firmware modules are compiled with mpy-cross (-march=host), as they are
deployed, and run by the MicroPython unix port that the tests use.

* sign_ms: median time of one Ed25519 signature over a typical node report's
  Sig_structure (temperature + tamper + battery); seal_ms: the whole envelope
  (SenML pack, CBOR, signature, COSE framing).
* sign_peak_heap_kb: the smallest `-X heapsize` in which the node imports its
  signer, loads its key and seals that report: the heap signing needs at its
  peak, found by bisection, fragmentation included. sign_resident_heap_kb is
  the part in use before the signature starts (code, tables, key), and
  sign_transient_heap_kb the rest. Objects on this 64-bit host are up to twice
  their size on a 32-bit ESP32 or RP2040, so these figures are upper bounds.

report_payload_bytes and at_round_trips_per_report come with the node cycle
(issue 7, second half) and are not reported until it exists.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "firmware" / "src" / "lib"

_REPORT = """
import envelope, ed25519, cbor
key = ed25519.SigningKey(bytes(range(32)))
T = 1767229200
RECORDS = [
    {"name": "temp", "value": 4.5, "unit": "Cel", "time": T},
    {"name": "tamper", "boolean": False, "time": T},
    {"name": "batt", "value": 3.6, "unit": "V", "time": T},
]
PREV = bytes(16)
"""

_TIMING = _REPORT + """
import time
protected = cbor.encode({1: -8, 4: envelope.kid_of(key.public_key)})
payload = cbor.encode({1: "node-bench-0001", 2: 3, 3: 41, 4: PREV, 5: __import__("senml").pack(RECORDS)})
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
seal_ms = median_ms(lambda: envelope.seal(key, "node-bench-0001", 3, 41, PREV, RECORDS), 41)
print(sign_ms, seal_ms, len(message))
"""

_HEAP = _REPORT + """
import gc
gc.collect()
resident = gc.mem_alloc()
envelope.seal(key, "node-bench-0001", 3, 41, PREV, RECORDS)
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


def measure() -> dict:
    with tempfile.TemporaryDirectory(prefix="pledgewatch-firmware-") as folder:
        modules = Path(folder)
        _compile(modules)
        timing = _run("probe_timing", modules, 256)
        if timing.returncode != 0:
            raise RuntimeError(f"timing run failed:\n{timing.stdout}{timing.stderr}")
        sign_ms, seal_ms, message_bytes = timing.stdout.split()
        peak_kb, resident = _smallest_heap_kb(modules)
    version = subprocess.run(
        [_micropython(), "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "sign_ms": round(float(sign_ms), 2),
        "seal_ms": round(float(seal_ms), 2),
        "signed_message_bytes": int(message_bytes),
        "sign_peak_heap_kb": peak_kb,
        "sign_resident_heap_kb": round(resident / 1024, 1),
        "sign_transient_heap_kb": round(peak_kb - resident / 1024, 1),
        "runtime": f"MicroPython unix port {version}, modules as .mpy",
    }


def main() -> None:
    print(json.dumps(measure()))


if __name__ == "__main__":
    main()
