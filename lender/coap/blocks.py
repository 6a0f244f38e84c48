"""Block1 reassembly (RFC 7959 §2.5) with a cap on each upload and on the number of uploads held at once.

aiocoap's own ``Block1Spool`` has neither cap, so the lender's resources
assemble bodies here. A step that is not the end of an upload raises the
refusal or the 2.31 Continue to send (lender.coap.resource renders it).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import aiocoap
from aiocoap import error
from aiocoap.numbers import codes
from aiocoap.numbers.optionnumbers import OptionNumber

MAX_ASSEMBLIES = 256          # concurrent Block1 uploads held at once (memory <= this x max_body)
ASSEMBLY_LIFETIME = 93.0      # RFC 7252 MAX_TRANSMIT_WAIT: a client gives up on an upload after this


class Continue(error.RenderableError):
    """Not an error: the block was taken, send the next one (2.31 with the request's Block1 option)."""

    def __init__(self, request: aiocoap.Message) -> None:
        super().__init__()
        self.block1 = request.opt.block1

    def to_message(self) -> aiocoap.Message:
        response = aiocoap.Message(code=codes.CONTINUE)
        response.opt.block1 = self.block1
        return response


class TooLarge(error.RequestEntityTooLarge):
    """4.13 with Size1 = the cap; `size` is the size that broke it, `partial` the bytes received (for the quarantine)."""

    def __init__(self, message: str, *, cap: int, size: int, partial: bytes = b"") -> None:
        super().__init__(message)
        self.cap = cap
        self.size = size
        self.partial = partial

    def to_message(self) -> aiocoap.Message:
        response = super().to_message()
        response.opt.size1 = self.cap
        return response


class BlockAssembly:
    """Reassembles Block1 uploads without ever holding more than `max_body` bytes per upload.

    Refuses with 4.13 as soon as a Size1 indication or the bytes received
    exceed the cap; 4.08 for a block with no upload in progress; 4.00 for a
    block whose size does not match its Block1 option. At most `max_uploads`
    uploads are held; the oldest is dropped first.
    """

    def __init__(self, max_body: int, *, max_uploads: int = MAX_ASSEMBLIES,
                 lifetime: float = ASSEMBLY_LIFETIME, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_body = max_body
        self.max_uploads = max_uploads
        self.lifetime = lifetime
        self._clock = clock
        self._uploads: OrderedDict[tuple, tuple[float, bytearray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._uploads)

    @staticmethod
    def _key(request: aiocoap.Message) -> tuple:
        return (
            request.remote.blockwise_key,
            request.code,
            request.get_cache_key([OptionNumber.BLOCK1, OptionNumber.BLOCK2, OptionNumber.SIZE1]),
        )

    def feed(self, request: aiocoap.Message) -> bytes:
        """The whole body once its last block is in; otherwise raises `Continue` or the refusal to send."""
        block1 = request.opt.block1
        payload = request.payload
        if block1 is None:
            if len(payload) > self.max_body:
                raise self._too_large(len(payload), payload)
            return payload
        now = self._clock()
        while self._uploads:
            key, (started, _) = next(iter(self._uploads.items()))
            if now - started <= self.lifetime:
                break
            del self._uploads[key]
        key = self._key(request)
        if block1.block_number == 0:
            self._uploads.pop(key, None)  # a new upload replaces an unfinished one (RFC 7959 §2.5)
            size1 = request.opt.size1
            if size1 is not None and size1 > self.max_body:
                raise self._too_large(size1, payload)
            data = bytearray()
            self._uploads[key] = (now, data)
            while len(self._uploads) > self.max_uploads:
                self._uploads.popitem(last=False)
        else:
            entry = self._uploads.get(key)
            if entry is None:
                raise error.RequestEntityIncomplete(
                    f"block {block1.block_number} arrived with no upload in progress; start again at block 0")
            data = entry[1]
        if block1.more and (block1.size_exponent == 7 or len(payload) != block1.size):
            self._uploads.pop(key, None)
            raise error.BadRequest(f"block {block1.block_number} carries {len(payload)} bytes, "
                                   f"its Block1 option says {block1.size}")
        if block1.start != len(data):
            if block1.start < len(data) and data[block1.start:block1.start + len(payload)] == payload and block1.more:
                raise Continue(request)  # a block we have already (a repeated request)
            self._uploads.pop(key, None)
            raise error.RequestEntityIncomplete(
                f"block {block1.block_number} starts at byte {block1.start}, expected {len(data)}")
        if len(data) + len(payload) > self.max_body:
            self._uploads.pop(key, None)
            raise self._too_large(len(data) + len(payload), bytes(data), at_least=True)
        data += payload
        if block1.more:
            raise Continue(request)
        self._uploads.pop(key, None)
        return bytes(data)

    def _too_large(self, size: int, partial: bytes, *, at_least: bool = False) -> TooLarge:
        return TooLarge(f"body of {'at least ' if at_least else ''}{size} bytes is over the {self.max_body}-byte cap",
                        cap=self.max_body, size=size, partial=partial)
