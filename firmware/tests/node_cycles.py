"""Runs node cycles on the fake board for the CPython integration tests: reads a plan (JSON) on stdin, prints one line per cycle.

    MICROPYPATH=firmware/tests/fakes:firmware/src/lib:firmware/src PLEDGEWATCH_UART1=/dev/pts/N \
        micropython -X heapsize=128k firmware/tests/node_cycles.py < plan.json

The plan: {"root": "/tmp/node", "cycles": [{...}, ...]}. Each cycle sets up the
board as the node would find it on that wake, then runs node.run(root) (the
real main, minus the final deepsleep):

    reset_cause   machine.PWRON_RESET (1, default for the first) or DEEPSLEEP_RESET (4)
    wake_reason   what machine.wake_reason() says (2: the tamper pin)
    celsius       the DS18B20's temperature (null: no sensor on the bus)
    crc_error     the DS18B20 answers with a broken CRC
    tamper        the tamper switch level (0 closed, 1 open)
    battery_uv    the battery ADC reading in microvolts at the pin
    acceleration  [x, y, z] in mg; shake: the LIS3DH latched motion
    power_cut     "after_sign": the power fails once the envelope is signed, before it is stored
    power_cut_at_write  n: the power fails during the n-th write to a file under root (flash) in this cycle,
                  after a random part of it (torn_bytes: how much, else random) reached the file
    tamper_during_cycle: the switch opens while the node is awake (after sampling)

Printed per cycle: "CYCLE " + JSON {report, sleep_ms, power_cut, watchdog_overdue, reset_pulses, wake_pins,
writes} (writes: how many writes to flash the cycle made, up to the cut).
"""

import gc
import json
import sys

import machine
import simdevices

plan = json.loads(sys.stdin.read())
root = plan["root"]
ONEWIRE_PIN, TAMPER_PIN, BATTERY_PIN, RESET_PIN = 13, 4, 34, 5
I2C_BUS = 0
LIS3DH_ADDRESS = 0x18


class PowerCut(BaseException):
    """The supply fails: nothing after this point of the cycle happens."""


def cut_after_sign(box, seq, envelope, alarm=False):
    raise PowerCut()




# What survives a deep sleep: the board (flash, pins, devices) and this harness. Everything the
# firmware imported is forgotten before each cycle, as a device reboots out of deep sleep; the
# cycle runs in a function so that nothing of it outlives it either.
SURVIVORS = set(sys.modules)


def run_cycle(index, cycle):
    import node
    import outbox

    board = machine.board
    board.reset(cycle.get("reset_cause", machine.PWRON_RESET if index == 0 else machine.DEEPSLEEP_RESET))
    board.wake_reason = cycle.get("wake_reason", machine.TIMER_WAKE)
    if cycle.get("celsius", 21.5) is not None:
        sensor = simdevices.DS18B20(celsius=cycle.get("celsius", 21.5))
        sensor.corrupt_crc = cycle.get("crc_error", False)
        board.attach_onewire(ONEWIRE_PIN, sensor)
    accelerometer = simdevices.LIS3DH(tuple(cycle.get("acceleration", (0, 0, 1000))))
    if cycle.get("shake"):
        accelerometer.shake()
    board.attach_i2c(I2C_BUS, LIS3DH_ADDRESS, accelerometer)
    board.pin_levels[TAMPER_PIN] = cycle.get("tamper", 0)
    board.set_adc(BATTERY_PIN, cycle.get("battery_uv", 1800000) * 65535 // 3300000)
    if cycle.get("power_cut") == "after_sign":
        outbox.Outbox.append = cut_after_sign
    if flash is not None:
        flash.arm(cycle.get("power_cut_at_write"), cycle.get("torn_bytes"))
    if cycle.get("tamper_during_cycle"):
        original_sample = node.Node.sample

        def sample_then_open(self, powered_on):
            result = original_sample(self, powered_on)
            board.drive(TAMPER_PIN, 1)
            return result

        node.Node.sample = sample_then_open
    power_cut = False
    sleep_ms = None
    try:
        sleep_ms, _ = node.run(root)
    except PowerCut:
        power_cut = True
    pulses = [level for _, pin, level in board.pin_writes if pin == RESET_PIN]
    return {
        "report": node.last_report,
        "sleep_ms": sleep_ms,
        "power_cut": power_cut,
        "watchdog_on": board.watchdog is not None,
        "watchdog_overdue": board.watchdog_overdue(),
        "reset_writes": pulses,
        "wake_pins": sorted(board.wake_pins.items()),
        "writes": None if flash is None else flash.writes,
    }


# Counting and cutting flash writes costs heap: only a plan that cuts at a write gets it (flashcut.py).
flash = None
if any("power_cut_at_write" in cycle for cycle in plan["cycles"]):
    import flashcut

    flash = flashcut.install(root, PowerCut)
    SURVIVORS.add("flashcut")

for index, cycle in enumerate(plan["cycles"]):
    for name in [name for name in sys.modules if name not in SURVIVORS]:
        del sys.modules[name]
    machine.board.irq_handlers = {}  # handlers are the old firmware's functions
    gc.collect()
    print("CYCLE " + json.dumps(run_cycle(index, cycle)))
