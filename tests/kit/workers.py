"""Gateways that speak OSCORE to a lender of several workers: enough of the agent's uplink to drive fault tests.

`ProtectedGateway` holds a device identity, its chain, the device's side of
its OSCORE context (as `lender register` wrote it) and an aiocoap client
context of its own (its own UDP source port: the kernel's SO_REUSEPORT group
hashes it to one worker). `send` posts one batch and reports what came back:
the ack's stored and already-present seqs, or the status of a refusal (an
unprotected 5.03 with its Max-Age, a 4.01 of a replayed request), or None on
a timeout. A gateway retries with a *new* request, as the agent does.
`rebind` starts a new client context: a NAT that gave the gateway a new port.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import aiocoap
from aiocoap import oscore as aiocoap_oscore
from aiocoap.numbers import codes

from durable import oscore
from tests.kit.lender import Device, ack_of, batch


@dataclass
class Reply:
    """What one request got: a code (None: no answer in time), the ack's lists, the Max-Age of a refusal."""

    code: aiocoap.numbers.codes.Code | None
    stored: tuple[int, ...] = ()
    already: tuple[int, ...] = ()
    max_age: int | None = None
    protected: bool = True

    @property
    def acked(self) -> tuple[int, ...]:
        return self.stored + self.already


@dataclass
class ProtectedGateway:
    device: Device
    context_dir: Path
    uri: str
    acked: set[int] = field(default_factory=set)
    _security: object = None
    _client: aiocoap.Context | None = None

    async def open(self) -> ProtectedGateway:
        if self._security is None:
            self._security = oscore.open_context(self.context_dir)
        self._client = await aiocoap.Context.create_client_context()
        self._client.client_credentials[self.uri.rsplit("/", 1)[0] + "/*"] = self._security
        return self

    async def rebind(self) -> None:
        """A new source port, as after a NAT rebinding (same OSCORE context, its state goes on)."""
        await self._client.shutdown()
        self._client = await aiocoap.Context.create_client_context()
        self._client.client_credentials[self.uri.rsplit("/", 1)[0] + "/*"] = self._security

    async def send(self, envelopes, *, timeout: float = 3.0) -> Reply:
        request = aiocoap.Message(code=codes.POST, uri=self.uri, payload=batch(envelopes), content_format=60)
        pending = self._client.request(request)
        try:
            response = await asyncio.wait_for(pending.response, timeout)
        except asyncio.TimeoutError:
            return Reply(None)
        except aiocoap_oscore.NotAProtectedMessage as exc:  # the lender could not unprotect: 5.03, a replay's 4.01
            plain = exc.plain_message
            return Reply(plain.code, max_age=plain.opt.max_age, protected=False)
        except aiocoap.error.Error:
            return Reply(None)
        if response.code != codes.CHANGED:
            return Reply(response.code, max_age=response.opt.max_age)
        ack = ack_of(response.payload)
        answer = Reply(response.code, tuple(ack[1]), tuple(ack[2]))
        self.acked.update(answer.acked)
        return answer

    async def close(self) -> None:
        if self._client is not None:
            await self._client.shutdown()
            self._client = None
        if self._security is not None:
            oscore.close_context(self._security)
            self._security = None
