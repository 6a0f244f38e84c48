"""The numbers of the wire contract, defined once: content formats, CBOR tags, COSE labels, CoAP paths, OSCORE suite.

Every other module (on the gateway, the lender, the technician's laptop)
imports these; the MicroPython firmware keeps its own copies, pinned by
`tests/vectors/` and checked against this module by the firmware tests.
"""
from __future__ import annotations

CONTENT_FORMAT_CBOR = 60        # application/cbor (RFC 7049 §7.3): every pledgewatch request and answer body

TAG_COSE_SIGN1 = 18             # RFC 9052 §4.2: one signer (envelopes, enrollment responses, site files)
TAG_COSE_SIGN = 98              # RFC 9052 §4.1: several signers (enrollment requests, installation reports)
ALG_EDDSA = -8                  # RFC 9053 §2.2: Ed25519 (software keys, nodes)
ALG_ES256 = -7                  # RFC 9053 §2.1: ECDSA P-256 with SHA-256 (TPM 2.0 keys: no TPM signs Ed25519)
ALGORITHM_NAMES = {ALG_EDDSA: "EdDSA", ALG_ES256: "ES256"}  # how the registry and the CLI name them
HEADER_ALG, HEADER_KID = 1, 4   # COSE header labels (RFC 9052 §3.1)
KID_BYTES = 8                   # a key id is SHA-256(public key)[0:8]
SIGNATURE_BYTES = 64            # Ed25519, and ES256 as r || s, 32 bytes each (RFC 9053 §2.1)

# COSE Receipts (RFC 9942) over the lender's transparency log (docs/evidence.md)
HEADER_RECEIPTS, HEADER_VDS, HEADER_VDP = 394, 395, 396   # receipts, verifiable data structure, its proofs
VDS_RFC9162_SHA256 = 1                                     # RFC 9162 §2.1 binary Merkle tree, SHA-256
VDP_INCLUSION, VDP_CONSISTENCY = -1, -2                    # the proof types of vds 1
HEADER_CHECKPOINT = -65537      # private use (RFC 9052 §3.1, below -65536): the checkpoint's size, time and device heads

# CoAP resource paths on the lender
PATH_TELEMETRY = ("t",)                 # gateway batches, under OSCORE
PATH_NODE = ("n",)                      # one node envelope per request
PATH_ENROLL = ("enroll",)               # enrollment requests (plain CoAP: no context yet)
PATH_SITES = ("enroll", "sites")        # POST a technician's signed site request: the signed site file, sealed to it
PATH_INSTALLATIONS = ("installations",)  # installation reports
PATH_COMMANDS = ("c",)                  # gateways fetch the lender's pending signed commands, under OSCORE
PATH_COMMAND_NOTICES = ("c", "o")       # gateways observe the newest command seq issued to them, under OSCORE

# The OSCORE suite every context uses (RFC 8613): its AEAD (mandatory to implement) and HKDF hash
OSCORE_ALGORITHM = "AES-CCM-16-64-128"
OSCORE_KDF_HASH = "sha256"
