"""Prometheus metrics of the service, defined once per process.

prometheus_client registers a metric globally when it is created, so each one is made here, once,
and the modules that count (ingest, writer, recording, gateway) import it. `GET /metrics` serves them.
"""

from prometheus_client import Counter, Gauge, Histogram

ITEMS = Counter("flywheel_ingest_items_total", "Ingested items by kind and result", ["kind", "result"])
QUEUE_ITEMS = Gauge("flywheel_writer_queue_items", "Items waiting for the writer")
COMMIT_SECONDS = Histogram(
    "flywheel_writer_commit_seconds", "Time to commit one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)  # fmt: skip
HANDOVERS = Counter("flywheel_writer_handovers_total", "Times the writer released the database to a waiting process")
REJECTED = Counter("flywheel_ingest_rejected_total", "Requests refused whole, by reason", ["reason"])
RECORDING_FAILURES = Counter("flywheel_recording_failures_total", "Gateway calls that could not be recorded")
GATEWAY = Counter("flywheel_gateway_requests_total", "Gateway requests by route and outcome", ["route", "outcome"])
MODEL_LOAD_FAILURES = Counter("flywheel_model_load_failures_total",
                              "Models (adapters, whole models, routes' bases) that could not be loaded, by route and "
                              "when: at start (a deployed model: its aliases answer 503) or at runtime (a 4xx)",
                              ["route", "when"])  # fmt: skip
MODELS_UNAVAILABLE = Gauge("flywheel_models_unavailable", "Deployed models and routes that cannot be served now")
TOOL_CALLS_UNPARSED = Counter("flywheel_tool_calls_unparsed_total",
                              "Local-route answers returned as text although they hold <tool_call> text, by route and "
                              "reason: malformed (does not parse), not_allowed (tool_choice none), missing (a call was "
                              "required, none came)", ["route", "reason"])  # fmt: skip
PREFIX_CACHE = Counter("flywheel_prefix_cache_requests_total",
                       "Prefills of a local route's engine by route and result: hit (run from the end of a cached "
                       "prompt prefix, serving.prefix) or miss (run whole)", ["route", "result"])  # fmt: skip
