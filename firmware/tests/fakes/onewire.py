"""A fake `onewire` module for the node firmware tests: the micropython-lib OneWire API over simulated devices; tests only.

The ESP32 and RP2040 builds freeze micropython-lib's onewire.py (over the C
module _onewire); the unix port has neither. This module keeps that class's
byte-level API (reset, readbit, readbyte, readinto, writebyte, write,
select_rom, scan, crc8) and serves the devices a test attached to a pin with
machine.board.attach_onewire (see simdevices.DS18B20). It follows the bus
protocol the firmware speaks: a reset, a ROM command (SKIP_ROM, MATCH_ROM),
then a function command, with the devices answering read time slots.
"""

import machine


class OneWireError(Exception):
    pass


def _crc8(data):
    # Dallas/Maxim CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected 0x8C)
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


class OneWire:
    SEARCH_ROM = 0xF0
    MATCH_ROM = 0x55
    SKIP_ROM = 0xCC

    def __init__(self, pin):
        self.pin_id = pin.id if hasattr(pin, "id") else pin
        self._selected = []
        self._expect = "rom"  # after a reset the bus master sends a ROM command
        self._rom = bytearray()

    def _devices(self):
        return [device for device in machine.board.onewire_devices.get(self.pin_id, []) if device.present]

    def reset(self, required=False):
        present = bool(self._devices())
        self._selected = []
        self._expect = "rom"
        self._rom = bytearray()
        if required and not present:
            raise OneWireError
        return present

    def writebyte(self, value):
        if self._expect == "rom":
            if value == self.SKIP_ROM:
                self._selected = self._devices()
                self._expect = "function"
            elif value == self.MATCH_ROM:
                self._expect = "match"
            else:
                self._expect = "ignored"
        elif self._expect == "match":
            self._rom.append(value)
            if len(self._rom) == 8:
                self._selected = [d for d in self._devices() if bytes(d.rom) == bytes(self._rom)]
                self._expect = "function"
        elif self._expect == "function":
            for device in self._selected:
                device.command(value)
            self._expect = "data"

    def write(self, buf):
        for value in buf:
            self.writebyte(value)

    def writebit(self, value):
        pass

    def readbit(self):
        if not self._selected:
            return 1  # the pull-up: nobody drives the line low
        bit = 1
        for device in self._selected:
            bit &= device.read_bit()
        return bit

    def readbyte(self):
        if not self._selected:
            return 0xFF
        value = 0xFF
        for device in self._selected:
            value &= device.read_byte()  # open drain: the bus is the AND of every device
        return value

    def readinto(self, buf):
        for index in range(len(buf)):
            buf[index] = self.readbyte()

    def select_rom(self, rom):
        self.reset()
        self.writebyte(self.MATCH_ROM)
        self.write(rom)

    def scan(self):
        return [bytearray(device.rom) for device in self._devices()]

    def crc8(self, data):
        return _crc8(data)
