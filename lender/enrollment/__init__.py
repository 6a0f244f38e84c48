"""lender.enrollment — the lender's enrollment floor: technicians and the enrollment key, the decision desk, and the
OSCORE contexts made for enrolled devices. Pure of CoAP: lender.coap.enroll serves the desk."""
