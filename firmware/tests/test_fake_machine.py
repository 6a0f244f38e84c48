"""The fake machine module behaves like the board API the firmware is written against (tests only; never shipped)."""

import time

import machine
from check import equal, raises


def _fresh_board():
    machine.board.reset()
    return machine.board


def test_the_fake_machine_shadows_the_unix_ports_own_module():
    assert hasattr(machine, "board") and hasattr(machine, "UART"), "firmware/tests/fakes is not first on MICROPYPATH"


def test_a_tamper_switch_edge_fires_the_pin_interrupt_once_per_edge():
    board = _fresh_board()
    seen = []
    tamper = machine.Pin(4, machine.Pin.IN, machine.Pin.PULL_UP)
    equal(tamper.value(), 1)
    tamper.irq(handler=lambda pin: seen.append(pin.value()), trigger=machine.Pin.IRQ_FALLING)
    board.drive(4, 0)
    board.drive(4, 0)
    board.drive(4, 1)
    equal(seen, [0])


def test_pin_writes_are_recorded_in_order_with_their_time():
    board = _fresh_board()
    reset_line = machine.Pin(5, machine.Pin.OUT, value=1)
    reset_line.off()
    reset_line.on()
    equal([(pin, level) for _, pin, level in board.pin_writes], [(5, 1), (5, 0), (5, 1)])
    assert board.pin_writes[0][0] <= board.pin_writes[-1][0]


def test_the_battery_adc_reads_what_the_test_sets_and_refuses_to_invent_a_value():
    board = _fresh_board()
    adc = machine.ADC(machine.Pin(26))
    raises(OSError, adc.read_u16)
    board.set_adc(26, 32768)
    equal(adc.read_u16(), 32768)
    equal(adc.read_uv(), 32768 * 3300000 // 65535)
    raises(ValueError, board.set_adc, 26, 70000)


def test_deepsleep_cannot_be_swallowed_by_the_firmware_and_rtc_memory_survives_it():
    board = _fresh_board()
    machine.RTC().memory(b"seq=41")
    try:
        try:
            machine.deepsleep(900000)
        except Exception:
            raise AssertionError("DeepSleep must not be an Exception")
    except machine.DeepSleep as sleep:
        equal(sleep.milliseconds, 900000)
    equal(board.sleeps, [900000])
    equal(machine.RTC().memory(), b"seq=41")
    raises(ValueError, machine.RTC().memory, bytes(2049))


def test_the_watchdog_is_overdue_only_when_not_fed_in_time():
    board = _fresh_board()
    assert not board.watchdog_overdue()
    watchdog = machine.WDT(timeout=30)
    assert not board.watchdog_overdue()
    time.sleep_ms(40)
    assert board.watchdog_overdue()
    watchdog.feed()
    assert not board.watchdog_overdue()


def test_a_uart_without_a_configured_line_says_how_to_configure_it():
    error = raises(OSError, machine.UART, 7, 9600)
    assert "PLEDGEWATCH_UART7" in str(error), str(error)
