"""CNI error JSON: the spec's well-known codes and ours (100+).

Messages name the key or file at fault and never say "not found": podman reads that
phrase as "command not found" and reports exit code 127 for a plain configuration error.
"""
from __future__ import annotations

from flannel_ext._util.errors import FlannelExtError

# Spec codes (CNI SPEC "Well-known Error Codes").
INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, INVALID_ENV = 1, 2, 3, 4
IO_FAILURE, DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER = 5, 6, 7, 11
PLUGIN_NOT_AVAILABLE = 50          # STATUS: ADD would fail now
# Ours.
BAD_SUBNET_ENV, DELEGATE_MISSING, DELEGATE_FAILED = 100, 101, 102


class CniError(FlannelExtError):
    """A failure reported to the runtime as CNI error JSON (a delegate's own is kept verbatim)."""

    def __init__(self, code: int, msg: str, details: str = "", *, raw: dict | None = None):
        self.code, self.msg, self.details, self.raw = code, msg, details, raw
        super().__init__(f"[{code}] {msg}" + (f": {details}" if details else ""))

    def to_json(self, version: str) -> dict:
        if self.raw is not None:
            return self.raw
        out: dict = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
