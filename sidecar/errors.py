"""The one error hierarchy of the sidecar; nothing here knows gRPC.

Every error a user can cause or meet is a `SidecarError` whose message is one
line naming the model, version or tensor involved. `sidecar.rpc.errors` maps
each class to a gRPC status in exactly one place; anything else that escapes is
a bug, answered INTERNAL with a generic message and logged in full.

    SidecarError
    ├── NotFoundError               unknown model or version
    ├── InvalidInputError           the request is wrong (client error)
    ├── UnavailableError            exists, but cannot serve now
    │   └── FleetUnavailableError   the fleet's store cannot be reached: nothing changed
    ├── FailedPreconditionError     the command does not fit the current state
    │   └── FleetConflictError      another replica changed the fleet state first
    ├── ModelLoadError              a version's file cannot become READY
    ├── ModelExecutionError         the model failed while running (server error)
    ├── UnauthenticatedError        no or malformed credentials
    ├── PermissionDeniedError       credentials that do not grant the call
    └── UnimplementedError          an RPC or option this server does not offer
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base class: `str(err)` is the one-line message shown to the caller."""


class NotFoundError(SidecarError):
    pass


class InvalidInputError(SidecarError):
    pass


class UnavailableError(SidecarError):
    pass


class FailedPreconditionError(SidecarError):
    pass


class FleetUnavailableError(UnavailableError):
    """A change of the fleet's shared state could not be written (etcd unreachable):
    nothing changed, here or anywhere."""


class FleetConflictError(FailedPreconditionError):
    """The fleet's state changed since this replica read it (compare-and-swap lost);
    the message says what it is now."""


class ModelLoadError(SidecarError):
    pass


class ModelExecutionError(SidecarError):
    pass


class UnauthenticatedError(SidecarError):
    """Raised by the control server's bearer-token interceptor (sidecar.rpc.auth)."""


class PermissionDeniedError(SidecarError):
    pass


class UnimplementedError(SidecarError):
    """Raised by the inference servicer's optional RPCs (sidecar.rpc.dataplane)."""


class DeadlineExceededError(SidecarError):
    """The caller's deadline passed before the work could start."""
