"""Private benchmarks: samplers answer, benchmarks score, runs are stored, candidates are compared.

The public surface: `evaluate(...) -> EvalReport`, `compare(candidate_run, incumbent_run) ->
Verdicts`, `compare_runs(settings, id, id)`, the samplers, `BenchmarkSpec`, and the errors.
"""

from evals.evaluate import EvalReport, compare_runs, evaluate
from evals.samplers import EndpointSampler, FunctionSampler, LocalSampler
from evals.spec import BenchmarkSpec
from evals.stats import Verdicts, compare
from evals.types import ContaminationError, EvalError, RunFailed, SamplerBase, SamplerResponse, SpecError

__all__ = ["BenchmarkSpec", "ContaminationError", "EndpointSampler", "EvalError", "EvalReport", "FunctionSampler",
           "LocalSampler", "RunFailed", "SamplerBase", "SamplerResponse", "SpecError", "Verdicts", "compare",
           "compare_runs", "evaluate"]
