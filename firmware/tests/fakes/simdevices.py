"""Simulated sensors for the node firmware tests (a DS18B20 on 1-Wire, a LIS3DH on I2C); tests only, never shipped.

Each simulation holds the device's registers or scratchpad as the datasheet
lays them out, so the firmware's own protocol code (CRC, sign handling,
register auto-increment, latched interrupts) is what the tests exercise:

* DS18B20 (Maxim DS18B20 datasheet, "Memory" and "Function commands"):
  Convert T (0x44) then Read Scratchpad (0xBE) gives 9 bytes, temperature LSB
  first in 1/16 degC, CRC-8 last. Knobs: `celsius`, `present`,
  `corrupt_crc`, `power_on_value` (the 85 degC reset value), `stuck_converting`.
* LIS3DH (ST LIS3DH datasheet, register map): WHO_AM_I 0x0F = 0x33,
  OUT_X_L..OUT_Z_H from 0x28 with bit 7 of the sub-address auto-incrementing,
  high-resolution 12-bit data left-justified (1 mg/digit at +-2 g), INT1_SRC
  0x31 latched until read. Knobs: `acceleration_mg`, `shake()`.
"""

from onewire import _crc8

DS18B20_FAMILY = 0x28


class DS18B20:
    def __init__(self, serial=b"\x01\x02\x03\x04\x05\x06", celsius=21.5):
        rom = bytearray([DS18B20_FAMILY]) + bytearray(serial)
        rom.append(_crc8(rom))
        self.rom = bytes(rom)
        self.celsius = celsius
        self.present = True
        self.corrupt_crc = False
        self.power_on_value = False
        self.stuck_converting = False
        self.conversions = 0
        self._converted = None
        self._out = b""

    def _scratchpad(self):
        if self.power_on_value or self._converted is None:
            raw = 0x0550  # 85.0 degC: the value a DS18B20 holds before its first conversion
        else:
            raw = int(round(self._converted * 16)) & 0xFFFF
        pad = bytearray([raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10])
        crc = _crc8(pad)
        pad.append(crc ^ 0x5A if self.corrupt_crc else crc)
        return bytes(pad)

    def command(self, code):
        if code == 0x44:  # Convert T
            self.conversions += 1
            if not self.stuck_converting:
                self._converted = self.celsius
            self._out = b""
        elif code == 0xBE:  # Read Scratchpad
            self._out = self._scratchpad()
        else:
            self._out = b""

    def read_bit(self):
        # After Convert T the device answers read slots with 0 while converting, 1 when done.
        return 0 if self.stuck_converting else 1

    def read_byte(self):
        if not self._out:
            return 0xFF
        value = self._out[0]
        self._out = self._out[1:]
        return value


class LIS3DH:
    WHO_AM_I = 0x0F
    OUT_X_L = 0x28
    INT1_SRC = 0x31

    def __init__(self, acceleration_mg=(0, 0, 1000)):
        self.registers = bytearray(0x40)
        self.registers[self.WHO_AM_I] = 0x33
        self.acceleration_mg = acceleration_mg
        self.writes = []  # (register, bytes) in order
        self._latched = 0

    def shake(self):
        """Motion over the threshold: INT1_SRC latches IA (bit 6) and the axes' high events until it is read."""
        self._latched = 0x40 | 0x2A

    def _out(self):
        data = bytearray()
        for mg in self.acceleration_mg:
            raw = (int(mg) << 4) & 0xFFFF  # 12-bit, left-justified, 1 mg/digit
            data.append(raw & 0xFF)
            data.append(raw >> 8)
        return data

    def read(self, register, count):
        increment = register & 0x80
        register &= 0x7F
        out = bytearray()
        for index in range(count):
            address = register + index if increment else register
            if self.OUT_X_L <= address < self.OUT_X_L + 6:
                out.append(self._out()[address - self.OUT_X_L])
            elif address == self.INT1_SRC:
                out.append(self._latched)
                self._latched = 0
            elif address < len(self.registers):
                out.append(self.registers[address])
            else:
                out.append(0)
        return bytes(out)

    def write(self, register, data):
        register &= 0x7F
        self.writes.append((register, bytes(data)))
        for index, value in enumerate(data):
            if register + index < len(self.registers) and register + index != self.WHO_AM_I:
                self.registers[register + index] = value
