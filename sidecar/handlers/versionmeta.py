"""A version's times and what its ONNX file says about itself, as text.

The control plane shows them per version (`ListVersions`, `ctl versions`);
the data plane's ModelConfig carries them as parameters of the version asked
for (`version_parameters`). Times are ISO 8601 in UTC, to the millisecond,
with a `Z`: `2026-11-30T04:20:06.895Z`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sidecar.loader.onnx import OnnxMeta
from sidecar.manager.servable import Servable


def iso8601(seconds: float) -> str:
    """Unix seconds as `2026-11-30T04:20:06.895Z` ("" for 0: unknown)."""
    if seconds <= 0:
        return ""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def onnx_parameters(meta: OnnxMeta) -> dict[str, str]:
    """`onnx_producer`, `onnx_producer_version`, `onnx_domain`, `onnx_model_version`,
    `onnx_graph_name`, `onnx_doc_string` and `onnx_meta.<key>` per metadata_props
    entry; only those the file sets (all bounded by the loader)."""
    params = {
        "onnx_producer": meta.producer_name,
        "onnx_producer_version": meta.producer_version,
        "onnx_domain": meta.domain,
        "onnx_model_version": str(meta.model_version) if meta.model_version else "",
        "onnx_graph_name": meta.graph_name,
        "onnx_doc_string": meta.doc_string,
    }
    params = {k: v for k, v in params.items() if v}
    params.update((f"onnx_meta.{k}", v) for k, v in meta.metadata_props)
    return params


def version_parameters(servable: Servable) -> dict[str, str]:
    """ModelConfig parameters of a loaded version: `created` (when the version
    appeared), `updated` (its file's mtime, as loaded) and the ONNX metadata.
    `DataPlane.model_metadata` passes them on as
    `ModelMetadata(..., parameters=version_parameters(handle))`."""
    identity = servable.loaded.identity
    params = {
        "created": iso8601(servable.version.note_created()),
        "updated": iso8601(identity.mtime_ns / 1e9),
    }
    params = {k: v for k, v in params.items() if v}
    params.update(onnx_parameters(servable.loaded.meta))
    return params
