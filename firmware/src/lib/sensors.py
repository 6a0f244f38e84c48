"""The node's sensors: DS18B20 temperature over 1-Wire, LIS3DH tilt and motion over I2C, the tamper switch, the battery.

Each reader checks what the device's datasheet lets it check and raises
SensorError otherwise, so a broken sensor costs its record, never the cycle:

* DS18B20 (Maxim DS18B20 datasheet): Skip ROM + Convert T (0x44), poll read
  slots until the conversion ends (at most 750 ms at 12 bits), Skip ROM + Read
  Scratchpad (0xBE), CRC-8 over all 9 bytes must be 0. Temperature is a signed
  16-bit count of 1/16 degC, so every reading is exact in a CBOR half float.
  85.0 degC straight after power-up is the reset value, not a reading. One
  sensor per bus (Skip ROM).
* LIS3DH (ST LIS3DH datasheet, register map): WHO_AM_I (0x0F) must read 0x33;
  setup writes CTRL_REG1 = 0x57 (100 Hz, XYZ), CTRL_REG4 = 0x88 (BDU, high
  resolution, +-2 g: 1 mg/digit on a 12-bit left-justified value), the INT1
  motion detector (INT1_THS, INT1_DURATION, INT1_CFG = 0x2A: X/Y/Z high, OR)
  latched (CTRL_REG5 LIR_INT1) and routed to INT1 (CTRL_REG3 I1_IA1). Reading
  INT1_SRC (0x31) tells whether motion happened since the last read and
  re-arms the latch. Tilt is the angle between gravity now and the installed
  orientation.
* The battery through a resistor divider on an ADC pin, rounded to the
  nearest CBOR half float (steps of 1/512 V between 2 and 4 V: ~2 mV).
"""

import math
import time

from errors import SensorError


def to_half(value):
    """The float16 nearest to value (ties to even), as a float: what CBOR's shortest encoding then sends in 3 bytes."""
    if value == 0 or value != value:
        return value
    magnitude = abs(value)
    exponent = math.floor(math.log(magnitude) / math.log(2))
    if 2 ** (exponent + 1) <= magnitude:  # log rounding at exact powers of two
        exponent += 1
    elif 2 ** exponent > magnitude:
        exponent -= 1
    exponent = max(exponent, -14)  # below that, float16 is subnormal with a fixed step
    if exponent > 15:
        raise ValueError("%r is beyond float16's range" % value)
    step = 2.0 ** (exponent - 10)
    units = magnitude / step
    whole = math.floor(units)
    rest = units - whole
    if rest > 0.5 or (rest == 0.5 and whole % 2):
        whole += 1
    result = whole * step
    return result if value > 0 else -result


class DS18B20:
    CONVERT_T = 0x44
    READ_SCRATCHPAD = 0xBE
    SKIP_ROM = 0xCC

    def __init__(self, bus, conversion_ms=750, sleep_ms=None, feed=None):
        self.bus = bus  # a onewire.OneWire
        self.conversion_ms = conversion_ms
        self._sleep_ms = sleep_ms if sleep_ms is not None else time.sleep_ms
        self.feed = feed

    def celsius(self):
        bus = self.bus
        if not bus.reset():
            raise SensorError("no DS18B20 answers on the 1-Wire bus (no presence pulse)")
        bus.writebyte(self.SKIP_ROM)
        bus.writebyte(self.CONVERT_T)
        deadline = time.ticks_add(time.ticks_ms(), self.conversion_ms)
        while not bus.readbit():
            if self.feed is not None:
                self.feed()
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise SensorError("DS18B20 conversion did not finish within %d ms" % self.conversion_ms)
            self._sleep_ms(10)
        if not bus.reset():
            raise SensorError("the DS18B20 left the bus during the conversion")
        bus.writebyte(self.SKIP_ROM)
        bus.writebyte(self.READ_SCRATCHPAD)
        pad = bytearray(9)
        bus.readinto(pad)
        if pad == b"\xff" * 9:
            raise SensorError("DS18B20 scratchpad reads all 1s: no device drives the bus")
        if bus.crc8(pad) != 0:
            raise SensorError("DS18B20 scratchpad CRC mismatch: %s" % bytes(pad))
        raw = pad[0] | pad[1] << 8
        if raw & 0x8000:
            raw -= 0x10000
        if raw == 0x0550:
            raise SensorError("DS18B20 reports 85.0 degC, its power-on value: the conversion did not run")
        return raw / 16


class LIS3DH:
    WHO_AM_I = 0x0F
    IDENTITY = 0x33
    CTRL_REG1 = 0x20
    CTRL_REG3 = 0x22
    CTRL_REG4 = 0x23
    CTRL_REG5 = 0x24
    OUT_X_L = 0x28
    INT1_CFG = 0x30
    INT1_SRC = 0x31
    INT1_THS = 0x32
    INT1_DURATION = 0x33
    AUTO_INCREMENT = 0x80

    def __init__(self, i2c, address=0x18):
        self.i2c = i2c
        self.address = address

    def _read(self, register, count):
        try:
            return self.i2c.readfrom_mem(self.address, register, count)
        except OSError as error:
            raise SensorError("LIS3DH at 0x%02x does not answer on I2C: %s" % (self.address, error))

    def _write(self, register, value):
        try:
            self.i2c.writeto_mem(self.address, register, bytes([value]))
        except OSError as error:
            raise SensorError("LIS3DH at 0x%02x does not answer on I2C: %s" % (self.address, error))

    def setup(self, motion_mg=250):
        identity = self._read(self.WHO_AM_I, 1)[0]
        if identity != self.IDENTITY:
            raise SensorError("device at 0x%02x is not a LIS3DH: WHO_AM_I reads 0x%02x" % (self.address, identity))
        self._write(self.CTRL_REG1, 0x57)
        self._write(self.CTRL_REG4, 0x88)
        self._write(self.CTRL_REG3, 0x40)
        self._write(self.CTRL_REG5, 0x08)
        self._write(self.INT1_THS, min(127, max(1, motion_mg // 16)))  # 16 mg per LSB at +-2 g
        self._write(self.INT1_DURATION, 0)
        self._write(self.INT1_CFG, 0x2A)

    def acceleration_mg(self):
        data = self._read(self.OUT_X_L | self.AUTO_INCREMENT, 6)
        out = []
        for index in (0, 2, 4):
            raw = data[index] | data[index + 1] << 8
            if raw & 0x8000:
                raw -= 0x10000
            out.append(raw >> 4)  # 12-bit left-justified, 1 mg/digit in high-resolution mode
        return out

    def moved(self):
        """Whether the motion interrupt fired since the last call (reading INT1_SRC re-arms the latch)."""
        return bool(self._read(self.INT1_SRC, 1)[0] & 0x40)


def tilt_degrees(now, reference):
    """The angle between two acceleration vectors in degrees; SensorError if either is (near) zero."""
    dot = now[0] * reference[0] + now[1] * reference[1] + now[2] * reference[2]
    length = math.sqrt(now[0] ** 2 + now[1] ** 2 + now[2] ** 2) * math.sqrt(reference[0] ** 2 + reference[1] ** 2 + reference[2] ** 2)
    if length < 1e-6:
        raise SensorError("no gravity vector to measure tilt against (free fall or a dead accelerometer)")
    cosine = max(-1.0, min(1.0, dot / length))
    return math.degrees(math.acos(cosine)) if hasattr(math, "degrees") else math.acos(cosine) * 180 / math.pi


class Battery:
    def __init__(self, adc, divider=2.0):
        self.adc = adc
        self.divider = divider

    def volts(self):
        try:
            microvolts = self.adc.read_uv()
        except OSError as error:
            raise SensorError("battery ADC cannot be read: %s" % error)
        return to_half(microvolts * self.divider / 1000000)


class TamperSwitch:
    def __init__(self, pin, open_level=1):
        self.pin = pin
        self.open_level = open_level

    def is_open(self):
        return self.pin.value() == self.open_level
