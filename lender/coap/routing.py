"""How the lender's CoAP site is layered: pass-through wrappers, and the plain-CoAP routes in front of OSCORE.

aiocoap hands each request to one root resource. The lender's root is a stack
of `Wrapper`s, each doing one thing before passing the request on (reloading
the registry, refusing unprotected requests), with `PlainRoutes` in front: the
few resources that must answer without OSCORE — `/n` for NB-IoT nodes, whose
envelopes are signed end to end, and `/enroll` for devices not enrolled yet —
are chosen by their visible Uri-Path; everything else, and every
OSCORE-protected request (whose path is inside the ciphertext), goes on to
the protected site.
"""
from __future__ import annotations

from collections.abc import Mapping

from aiocoap import interfaces


class Wrapper(interfaces.Resource):
    """A resource that passes every request on to `inner` through `render_to_pipe` (override to act first)."""

    def __init__(self, inner: interfaces.Resource) -> None:
        super().__init__()
        self.inner = inner

    async def render(self, request):
        raise RuntimeError("a Wrapper is used through render_to_pipe only")

    async def needs_blockwise_assembly(self, request):
        raise RuntimeError("a Wrapper is used through render_to_pipe only")

    def get_resources_as_linkheader(self):
        return self.inner.get_resources_as_linkheader()

    async def render_to_pipe(self, pipe) -> None:
        await self.inner.render_to_pipe(pipe)


class PlainRoutes(Wrapper):
    """Plain-CoAP requests for a listed path (or under a listed prefix) go to its resource; all others to `inner`."""

    def __init__(self, inner: interfaces.Resource, routes: Mapping[tuple[str, ...], interfaces.Resource],
                 prefixes: Mapping[tuple[str, ...], interfaces.Resource] | None = None) -> None:
        super().__init__(inner)
        self.routes = dict(routes)
        self.prefixes = dict(prefixes or {})

    def target(self, request) -> interfaces.Resource:
        if request.opt.oscore is not None:  # its Uri-Path is encrypted: it is for the protected site
            return self.inner
        path = tuple(request.opt.uri_path)
        if path in self.routes:
            return self.routes[path]
        for prefix, resource in self.prefixes.items():
            if path[: len(prefix)] == prefix and len(path) > len(prefix):
                return resource
        return self.inner

    async def render_to_pipe(self, pipe) -> None:
        await self.target(pipe.request).render_to_pipe(pipe)
