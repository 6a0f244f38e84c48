"""lender.coap — the lender's CoAP floor: Block1 assembly with a cap, the ingest thread, one resource base class
(`lender.coap.resource.LenderResource`) from which ``/t``, ``/n`` and ``/enroll`` derive, and the plain-CoAP routes
in front of the OSCORE-protected site."""
