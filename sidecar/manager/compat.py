"""Whether a version can replace the active one without breaking its clients.

Pure functions of two signatures: every input and output the clients use must
still be there with the same datatype and rank, and no fixed dimension may
change or appear where the old one was dynamic; a new required input breaks
clients too. Extra outputs, and dimensions that become dynamic, are fine.
"""

from __future__ import annotations

from sidecar.loader.signature import Signature, TensorSpec


def _tensor_diff(kind: str, old: TensorSpec, new: TensorSpec) -> str | None:
    if old.datatype != new.datatype:
        return f"{kind} '{old.name}': datatype {old.datatype} -> {new.datatype}"
    if len(old.shape) != len(new.shape):
        return f"{kind} '{old.name}': rank {len(old.shape)} -> {len(new.shape)}" \
               f" (shape {list(old.shape)} -> {list(new.shape)})"
    for before, after in zip(old.shape, new.shape, strict=True):
        if after != -1 and after != before:
            return f"{kind} '{old.name}': shape {list(old.shape)} -> {list(new.shape)}"
    return None


def incompatibilities(old: Signature, new: Signature) -> list[str]:
    """What would break for clients of `old` if `new` served instead ([] = nothing)."""
    problems: list[str] = []
    for kind, before, after in (("input", old.input_by_name, new.input_by_name),
                                ("output", old.output_by_name, new.output_by_name)):
        for name, spec in before.items():
            other = after.get(name)
            if other is None:
                problems.append(f"{kind} '{name}' is gone")
            elif (diff := _tensor_diff(kind, spec, other)) is not None:
                problems.append(diff)
    problems.extend(f"input '{name}' is new and required"
                    for name in new.input_by_name if name not in old.input_by_name)
    return problems
