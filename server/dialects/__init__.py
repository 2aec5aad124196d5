"""The dialect registry: every API dialect the shim speaks, each one module (or package).

Adding a dialect = one module that defines `DIALECT = Dialect(...)` (schema, mapping, error
shape) + one entry below. The app, the middleware (metrics, access log), the error handler, the
contract tests and the load generator all read this tuple.
"""

from server.dialects import cohere, legacy_rank, tei, vllm

DIALECTS = (legacy_rank.DIALECT, cohere.DIALECT, tei.DIALECT, vllm.DIALECT)
