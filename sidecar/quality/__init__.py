"""Quality: judge versions by model quality against ground truth sent after the fact.

Clients send truth ("feedback") for request ids; `memory.AnswerMemory` keeps,
per model, what each version answered for recent ids (`score.summarize`);
`score` joins truth to answers into per-row outcomes; `stats` accumulates
them per version and per pair of versions on the same rows (the previous
version answers a mirrored share of the requests); `judge.judge_quality`
decides, with a test valid under continuous monitoring, whether the active
version is worse than the previous one. Pure Python and numpy: knows nothing
of gRPC, protobuf or onnxruntime.

`engine.QualityEngine` (not imported here: it depends on the manager and the
guard) wires these to the server: the data plane's remembering, the shadow
mirror's paired copies, feedback, the guard's verdicts, and the figures of
the control surface (`compare`, feedback counts, quality values).
"""

from sidecar.quality.config import QualityConfig, parse_quality
from sidecar.quality.judge import QualityVerdict, evidence_key, judge_quality
from sidecar.quality.memory import AnswerMemory, MemoryCounts
from sidecar.quality.score import Answer, Outcomes, check_truth, outcomes, summarize
from sidecar.quality.stats import MetricTally, PairedTally

__all__ = [
    "Answer", "AnswerMemory", "MemoryCounts", "MetricTally", "Outcomes", "PairedTally",
    "QualityConfig", "QualityVerdict", "check_truth", "evidence_key", "judge_quality",
    "outcomes", "parse_quality", "summarize",
]
