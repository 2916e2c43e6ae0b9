"""The domain error tree.

Every error a user can see derives from `FlannelExtError`. Errors about a failed
external command keep its argv, exit code and output (like Felix's FailedSystemCall),
so a log line or a test can say exactly what ran and what it printed.
"""
from __future__ import annotations


class FlannelExtError(Exception):
    """Base of every flannel-ext error."""

    exit_code = 1


class ConfigError(FlannelExtError):
    """A bad net-conf.json (or CLI value): names the file, field, value and fix."""

    exit_code = 2

    def __init__(self, source: str, field: str | None, value: object, problem: str, fix: str = ""):
        self.source, self.field, self.value, self.problem, self.fix = source, field, value, problem, fix
        where = f"{source}: " + (f"{field}: " if field else "")
        shown = "" if value is None else f" (got {value!r})"
        hint = f"; {fix}" if fix else ""
        super().__init__(f"{where}{problem}{shown}{hint}")


class HookLoadError(FlannelExtError):
    """A Python hook or recipe that cannot be used: names the hook and the fix."""

    exit_code = 2


class StoreError(FlannelExtError):
    """The lease store failed (unreachable, inconsistent, out of subnets)."""

    exit_code = 4


class OutOfSubnets(StoreError):
    """No free subnet is left between SubnetMin and SubnetMax."""


class LeaseConflict(StoreError):
    """Another node took the subnet first; the caller picks another one."""


class HookError(FlannelExtError):
    """A hook call failed. `temporary` says whether the runtime should retry it."""

    temporary = True

    def __init__(self, message: str, *, hook: str = "", subnet: str = ""):
        self.hook, self.subnet = hook, subnet
        super().__init__(message)


class CommandError(HookError):
    """An external command exited non-zero; carries argv, exit code and output."""

    def __init__(self, argv: list[str], returncode: int | None, output: str, *, hook: str = "",
                 subnet: str = "", stderr: str = ""):
        self.argv, self.returncode, self.output, self.stderr = list(argv), returncode, output, stderr
        shown = (output + ("\n" + stderr if stderr else "")).strip()
        if len(shown) > 400:
            shown = shown[:400] + "…"
        super().__init__(f"command {self.argv!r} exited {returncode}: {shown}", hook=hook, subnet=subnet)


class HookTimeout(HookError):
    """A hook ran longer than its timeout and was killed (its process group, for commands)."""

    def __init__(self, hook: str, timeout: float, *, subnet: str = "", argv: list[str] | None = None,
                 output: str = ""):
        self.timeout, self.argv, self.output = timeout, list(argv or []), output
        super().__init__(f"{hook} timed out after {timeout:g}s", hook=hook, subnet=subnet)


class HookStillRunning(HookTimeout):
    """A Python hook's previous call overran its timeout and has not returned yet: this call
    waited for it (one call at a time) until its own timeout, and did not start."""

    def __init__(self, hook: str, timeout: float, *, running: str, running_for: float, subnet: str = ""):
        super().__init__(hook, timeout, subnet=subnet)
        self.args = (f"{hook} not started: waited {timeout:g}s for the previous call ({running}, "
                     f"running for {running_for:.0f}s) to return; hooks get one call at a time",)


class TemporaryError(HookError):
    """Raised by a hook: retry this call after `delay` seconds (or the runtime's backoff)."""

    def __init__(self, message: str = "", delay: float | None = None):
        self.delay = delay
        super().__init__(message)


class PermanentError(HookError):
    """Raised by a hook: log it, count it, and do not retry."""

    temporary = False


class BatchError(HookError):
    """Raised by a batch hook method when only some leases failed.

    `failures` maps a lease key (e.g. ``10.5.1.0-24``) to the exception for that lease;
    the leases not named succeeded.
    """

    def __init__(self, failures: dict[str, BaseException]):
        self.failures = dict(failures)
        super().__init__(f"{len(self.failures)} lease(s) failed: " + ", ".join(sorted(self.failures)))
