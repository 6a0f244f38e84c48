"""A fake `machine` module for running the node firmware under the MicroPython unix port: tests only, never on a device.

The test harness puts firmware/tests/fakes first on MICROPYPATH, so the
firmware's `import machine` gets this module instead of the unix port's
(which has no UART, RTC, WDT or deepsleep). It follows the ESP32/RP2040 API
the firmware is type-checked against, and records what the firmware did in
`board`, the test's handle on the simulated hardware:

* UART(n) talks to a real serial device: the path in the environment variable
  PLEDGEWATCH_UART<n> (a pseudo-terminal whose other end is a Python modem
  simulator), with MicroPython's timeout / timeout_char semantics.
* Pin values and interrupts are driven by the test (board.drive), ADC readings
  set by it (board.set_adc); every pin write is recorded with its time.
* deepsleep() raises DeepSleep, which is not an Exception, so the firmware
  cannot swallow it; RTC memory survives it as on an ESP32.
* WDT: board.watchdog_overdue() tells whether a feed came too late.
* I2C talks to simulated devices the test attaches (board.attach_i2c, see
  simdevices.py); a missing address raises OSError(ENODEV) as the ports do.
* deepsleep wake sources the firmware arms (Pin.irq(wake=DEEPSLEEP)) are
  recorded in board.wake_pins; board.wake_reason is what wake_reason() says.
"""

import os
import select
import time

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

IDLE = 1
SLEEP = 2
DEEPSLEEP = 4
PIN_WAKE = 2
EXT0_WAKE = 2
TIMER_WAKE = 4

_ENODEV = 19


class DeepSleep(BaseException):
    """The firmware asked for deep sleep: on a device the chip would now power down and later reboot."""

    def __init__(self, milliseconds):
        super().__init__(milliseconds)
        self.milliseconds = milliseconds


class _Board:
    """What the test controls and observes."""

    def __init__(self):
        self.reset()

    def reset(self, cause=PWRON_RESET):
        self.reset_cause = cause
        self.unique_id = b"\x24\x0a\xc4\x00\x00\x07"
        self.pin_levels = {}
        self.pin_writes = []  # (ticks_ms, pin id, value)
        self.adc_values = {}
        self.rtc_memory = b""
        self.sleeps = []  # milliseconds of every deepsleep/lightsleep asked for
        self.irq_handlers = {}
        self.watchdog = None  # [timeout_ms, ticks_ms of the last feed]
        self.wake_reason = 0
        self.wake_pins = {}  # pin id -> trigger armed to wake from deepsleep
        self.i2c_devices = {}  # bus id -> {address: device}
        self.onewire_devices = {}  # pin id -> [device, ...]

    def attach_i2c(self, bus, address, device):
        """Put a simulated device (an object with read(register, n) and write(register, data)) on an I2C bus."""
        self.i2c_devices.setdefault(bus, {})[address] = device

    def attach_onewire(self, pin, device):
        """Put a simulated 1-Wire device on the bus of a pin (the fake onewire module serves it)."""
        self.onewire_devices.setdefault(pin, []).append(device)

    def drive(self, pin, value):
        """Set an input pin's level from outside, firing its interrupt handler on a matching edge."""
        old = self.pin_levels.get(pin, 0)
        self.pin_levels[pin] = 1 if value else 0
        handler = self.irq_handlers.get(pin)
        if handler is not None and old != self.pin_levels[pin]:
            function, trigger, pin_object = handler
            edge = Pin.IRQ_RISING if value else Pin.IRQ_FALLING
            if trigger & edge:
                function(pin_object)

    def set_adc(self, pin, value_u16):
        if not 0 <= value_u16 <= 0xFFFF:
            raise ValueError("an ADC reading is 0..65535, got %r" % (value_u16,))
        self.adc_values[pin] = value_u16

    def watchdog_overdue(self):
        if self.watchdog is None:
            return False
        timeout, fed = self.watchdog
        return time.ticks_diff(time.ticks_ms(), fed) > timeout


board = _Board()


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 1
    IRQ_RISING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        if pull == Pin.PULL_UP and id not in board.pin_levels:
            board.pin_levels[id] = 1
        if value is not None:
            self.value(value)

    def value(self, value=None):
        if value is None:
            return board.pin_levels.get(self.id, 0)
        level = 1 if value else 0
        board.pin_levels[self.id] = level
        board.pin_writes.append((time.ticks_ms(), self.id, level))
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def __call__(self, value=None):
        return self.value(value)

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, wake=None):
        if wake is not None and wake & DEEPSLEEP:
            board.wake_pins[self.id] = trigger
        if handler is None:
            board.irq_handlers.pop(self.id, None)
        else:
            board.irq_handlers[self.id] = (handler, trigger, self)


class ADC:
    def __init__(self, pin, atten=None):
        self.id = pin.id if isinstance(pin, Pin) else pin

    def read_u16(self):
        if self.id not in board.adc_values:
            raise OSError("fake ADC on pin %r has no reading: the test must call board.set_adc()" % (self.id,))
        return board.adc_values[self.id]

    def read_uv(self):
        # a 3.3 V full scale, as on the RP2040
        return self.read_u16() * 3300000 // 65535


class RTC:
    def __init__(self, id=0):
        pass

    def datetime(self, datetimetuple=None):
        if datetimetuple is not None:
            raise OSError("the fake RTC follows the host clock; it cannot be set")
        year, month, day, hour, minute, second, weekday, _ = time.localtime()
        return (year, month, day, weekday, hour, minute, second, 0)

    def memory(self, data=None):
        """ESP32 RTC slow memory: kept across deepsleep (and here, across board.reset)."""
        if data is None:
            return board.rtc_memory
        if len(data) > 2048:
            raise ValueError("RTC memory holds at most 2048 bytes")
        board.rtc_memory = bytes(data)
        return None


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout <= 0:
            raise ValueError("watchdog timeout must be positive")
        board.watchdog = [timeout, time.ticks_ms()]

    def feed(self):
        if board.watchdog is not None:
            board.watchdog[1] = time.ticks_ms()


def deepsleep(time_ms=0):
    board.sleeps.append(time_ms)
    raise DeepSleep(time_ms)


def lightsleep(time_ms=0):
    board.sleeps.append(time_ms)
    time.sleep_ms(min(time_ms, 10))


def reset_cause():
    return board.reset_cause


def wake_reason():
    return board.wake_reason


class I2C:
    """An I2C controller whose bus holds the simulated devices the test attached with board.attach_i2c."""

    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        self.id = id

    def _device(self, address):
        device = board.i2c_devices.get(self.id, {}).get(address)
        if device is None:
            raise OSError(_ENODEV)  # what the ESP32 and RP2040 ports raise when nothing acknowledges
        return device

    def scan(self):
        return sorted(board.i2c_devices.get(self.id, {}))

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        return bytes(self._device(addr).read(memaddr, nbytes))

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._device(addr).write(memaddr, bytes(buf))


def unique_id():
    return board.unique_id


def freq(hz=None):
    return 240000000 if hz is None else None


def idle():
    time.sleep_ms(1)


class UART:
    """A UART whose line is the serial device named by $PLEDGEWATCH_UART<id> (a pty in tests)."""

    def __init__(self, id, baudrate=9600, **settings):
        path = os.getenv("PLEDGEWATCH_UART%d" % id)
        if not path:
            raise OSError("fake UART%d: set PLEDGEWATCH_UART%d to the serial device (pty) it talks to" % (id, id))
        self.id = id
        self._file = open(path, "r+b")
        self._poll = select.poll()
        self._poll.register(self._file, select.POLLIN)
        self.init(baudrate, **settings)

    def init(self, baudrate=9600, bits=8, parity=None, stop=1, tx=None, rx=None, timeout=0, timeout_char=0, rxbuf=256, **_):
        self.baudrate = baudrate
        self.timeout = timeout
        self.timeout_char = timeout_char

    def deinit(self):
        if self._file is not None:
            self._poll.unregister(self._file)
            self._file.close()
            self._file = None

    def _ready(self, wait_ms):
        return bool(self._poll.poll(wait_ms))

    def any(self):
        # like several MicroPython ports, 1 means "at least one byte is waiting"
        return 1 if self._ready(0) else 0

    def _byte(self):
        """One byte from the line, or None when there is none after all (a hang-up reads as 'ready')."""
        byte = self._file.read(1)
        return byte if byte else None

    def read(self, nbytes=-1):
        out = bytearray()
        wait = self.timeout
        while nbytes < 0 or len(out) < nbytes:
            if not self._ready(wait):
                break
            byte = self._byte()
            if byte is None:
                break
            out.extend(byte)
            wait = self.timeout_char
        return bytes(out) if out else None

    def readinto(self, buffer, nbytes=-1):
        data = self.read(len(buffer) if nbytes < 0 else nbytes)
        if data is None:
            return None
        buffer[: len(data)] = data
        return len(data)

    def readline(self):
        out = bytearray()
        wait = self.timeout
        while not out.endswith(b"\n"):
            if not self._ready(wait):
                break
            byte = self._byte()
            if byte is None:
                break
            out.extend(byte)
            wait = self.timeout_char
        return bytes(out) if out else None

    def write(self, buffer):
        # MicroPython's files are unbuffered: the bytes are on the line once write() returns.
        # (Its flush() would fsync(), which a tty refuses with EINVAL.)
        return self._file.write(buffer)

    def flush(self):
        pass

    def txdone(self):
        return True
