"""Private benchmarks: samplers answer, benchmarks score, runs are stored, candidates are compared.

The public surface: `evaluate(...) -> EvalReport`, `compare(candidate_run, incumbent_run) ->
Verdicts`, the samplers (and `build_sampler` to make one from plain data), `BenchmarkSpec`, and the errors.
"""

from evals.evaluate import EvalReport, evaluate
from evals.samplers import SAMPLERS, EndpointSampler, FunctionSampler, LocalSampler, build_sampler
from evals.spec import BenchmarkSpec
from evals.stats import Verdicts, compare
from evals.types import ContaminationError, EvalError, RunFailed, SamplerBase, SamplerResponse, SpecError

__all__ = ["SAMPLERS", "BenchmarkSpec", "ContaminationError", "EndpointSampler", "EvalError", "EvalReport",
           "FunctionSampler", "LocalSampler", "RunFailed", "SamplerBase", "SamplerResponse", "SpecError", "Verdicts",
           "build_sampler", "compare", "evaluate"]
