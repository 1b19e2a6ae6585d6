"""fleetpush's wire protocol: messages, canonical encoding, signing and verification.

Sans-IO: every function here maps bytes to values or raises; nothing opens a socket or a
file except the explicit key-file helpers in ``keys`` (which write through
``fleetpush_common.atomic``).
"""

from fleetpush_protocol.driver import Accepted, DeviceTrust, Ignored, KeyringAccepted, Rejected
from fleetpush_protocol.envelope import (
    MAX_MESSAGE_BYTES,
    decode_envelope,
    decode_message,
    encode_message,
    sign_message,
    verify_device_message,
)
from fleetpush_protocol.errors import ContentError, FleetpushError, TransportError
from fleetpush_protocol.keys import KeyPair
from fleetpush_protocol.messages import (
    FORMAT,
    CancelNotice,
    ErrorInfo,
    FailureCode,
    Inventory,
    Keyring,
    Payload,
    Presence,
    Progress,
    Release,
    Report,
    ReportState,
    SigningKeyInfo,
    Target,
    UpdateNotice,
)
from fleetpush_protocol.topics import Topics
from fleetpush_protocol.verify import (
    DeviceIdentity,
    SeenSequence,
    TrustedKeyring,
    Verified,
    VerifyPolicy,
    verify_keyring,
    verify_keyring_chain,
    verify_notice,
)

__all__ = [
    "FORMAT",
    "MAX_MESSAGE_BYTES",
    "Accepted",
    "CancelNotice",
    "ContentError",
    "DeviceIdentity",
    "DeviceTrust",
    "ErrorInfo",
    "FailureCode",
    "FleetpushError",
    "Ignored",
    "Inventory",
    "KeyPair",
    "Keyring",
    "KeyringAccepted",
    "Payload",
    "Presence",
    "Progress",
    "Rejected",
    "Release",
    "Report",
    "ReportState",
    "SeenSequence",
    "SigningKeyInfo",
    "Target",
    "Topics",
    "TransportError",
    "TrustedKeyring",
    "UpdateNotice",
    "Verified",
    "VerifyPolicy",
    "decode_envelope",
    "decode_message",
    "encode_message",
    "sign_message",
    "verify_device_message",
    "verify_keyring",
    "verify_keyring_chain",
    "verify_notice",
]
