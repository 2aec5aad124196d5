"""The one settings object shared by the launcher and the shim.

Every field is an environment variable `RERANKER_<FIELD>` and a launcher flag `--<field-with-dashes>`.
The launcher hands its settings to the shim process through the same environment variables, so a
value set once (Helm value, systemd Environment=, CLI flag) reaches both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEMO_MODEL_DIR = "models/qwen3-reranker-tiny"


def _split_list(value):
    """Lists come from env vars as JSON (`["a","b"]`) or as comma/space separated text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part for part in text.replace(",", " ").split() if part]
    return value


StrList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore", validate_default=True)

    # --- what runs -------------------------------------------------------------------------
    mode: Literal["all", "vllm", "shim"] = Field(
        "all", description="all: vLLM + shim supervised together; vllm: engine only; shim: API only")

    # --- the model ---------------------------------------------------------------------------
    model: str = Field("", description="Hub id or local path; empty = offline demo model")
    served_model_name: str = Field("", description="Name reported by the API; default from model")
    tokenizer: str = Field("", description="Tokenizer path/id for the shim; default = model")
    qwen3_overrides: Literal["auto", "on", "off"] = Field(
        "auto", description="Qwen3 --hf-overrides: auto = only for original (CausalLM) checkpoints")

    # --- vLLM engine flags (the launcher maps these, and only these, to vLLM argv) -------------
    vllm_host: str = "127.0.0.1"
    vllm_port: int = 8001
    vllm_url: str = Field("", description="shim mode: base URL of a running vLLM")
    max_model_len: int = 8192
    dtype: str = "auto"
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = Field(
        None, description="unset: 32768 when a GPU is visible (measured +20% on rag), else vLLM's")
    enable_prefix_caching: bool = Field(True, description="the shared instruction+query prefix")
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    vllm_shutdown_timeout: int = Field(30, description="vLLM --shutdown-timeout: drain seconds")
    extra_vllm_args: StrList = Field(default_factory=list, description="passed to vLLM verbatim")

    # --- start-up and deterministic scores (issue 12; launcher/vllm_args.py vllm_environment) ----
    cache_dir: str = Field(
        ".cache", description="persistent, writable: vLLM's model-info, torch.compile and Triton "
        "caches live in <cache_dir>/vllm (VLLM_CACHE_ROOT); '' = vLLM's own defaults")
    vllm_fork_engine: bool = Field(
        True, description="GPU: fork vLLM's engine core instead of a fresh interpreter (-15 s a start)")
    deterministic: bool = Field(
        True, description="bit-identical scores whatever the batch or load: VLLM_BATCH_INVARIANT=1 "
        "on GPU (-7..-12% throughput on an H200) and P(yes) computed in the shim from vLLM's logit")

    # --- supervision ---------------------------------------------------------------------------
    vllm_startup_timeout: float = Field(1800.0, description="seconds to wait for vLLM /health")
    vllm_max_restarts: int = Field(5, description="restarts within restart_window before giving up")
    vllm_restart_window: float = 600.0
    vllm_restart_backoff: float = Field(2.0, description="first backoff; doubles, capped at 30 s")

    # --- the shim ------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = 8000
    default_instruction: str = DEFAULT_INSTRUCTION
    engine_api: Literal["tokens", "rerank"] = Field(
        "tokens", description="tokens: shim renders+tokenises, vLLM /classify; rerank: vLLM /rerank")
    max_documents: int = Field(1000, description="documents per request")
    max_request_tokens: int = Field(2_000_000, description="document tokens per request (after cuts)")
    max_query_tokens: int = Field(2048, description="longer queries are cut to this")
    max_doc_tokens: int = Field(0, description="per-document token cut; 0 = what max_model_len allows")
    chunk_long_documents: bool = Field(False, description="score long docs as chunks (max over them)")
    max_chunks_per_doc: int = Field(10, description="chunk cap when chunking")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="larger bodies get 413")
    pairs_per_engine_call: int = Field(64, description="large requests go to vLLM in concurrent slices")
    upstream_timeout: float = Field(120.0, description="seconds for one call to vLLM")

    # admission control: in-flight work, counted in (query, document) pairs and tokens
    max_inflight_pairs: int = 4096
    max_inflight_tokens: int = 0  # 0 = no token bound
    retry_after_seconds: int = 1

    # rate limiting: "N/period" per API key, else per client IP; empty = off
    rate_limit: str = "300/minute"
    trusted_proxies: StrList = Field(default_factory=list, description="CIDRs allowed to set X-Forwarded-For")

    # auth: off unless keys or a JWT key are configured
    api_keys: StrList = Field(default_factory=list)
    api_keys_file: Path | None = None
    jwt_secret: str = Field("", description="HS256 shared secret")
    jwt_public_key: str = Field("", description="RS256 public key (PEM text or file path)")
    jwt_issuer: str = ""
    jwt_audience: str = ""

    # score cache (off by default)
    score_cache: bool = False
    score_cache_entries: int = 100_000
    score_cache_ttl: float = 3600.0

    # drain: readiness fails at once, then this delay, then stop accepting and finish in-flight
    drain_delay: float = Field(0.0, description="seconds to keep serving after readiness fails")
    drain_timeout: float = Field(60.0, description="seconds in-flight requests may take to finish")

    log_level: str = "INFO"
    log_documents: bool = Field(False, description="log document and query text (off: privacy)")
    workers: int = Field(0, description="shim worker processes; 0 = auto (one per 4 CPUs, 1..4)")

    @field_validator("extra_vllm_args", "trusted_proxies", "api_keys", mode="before")
    @classmethod
    def _lists(cls, value):
        return _split_list(value)

    # --- derived -------------------------------------------------------------------------------
    @property
    def shim_workers(self) -> int:
        if self.workers > 0:
            return self.workers
        import os

        return max(1, min(4, (os.cpu_count() or 1) // 4))

    @property
    def model_path(self) -> str:
        return self.model or DEMO_MODEL_DIR

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return Path(self.model_path.rstrip("/")).name.lower()

    @property
    def upstream_url(self) -> str:
        return (self.vllm_url or f"http://{self.vllm_host}:{self.vllm_port}").rstrip("/")

    def per_worker(self) -> "Settings":
        """The share of one shim worker: in-flight bounds and rate limits are per process, so
        with N workers each enforces 1/N (rounded up). A client whose keep-alive connection
        sticks to one worker therefore gets 1/N of its rate budget: for exact per-client limits
        run one worker or limit at the proxy."""
        n = self.shim_workers
        if n <= 1:
            return self
        share = {"max_inflight_pairs": -(-self.max_inflight_pairs // n),
                 "max_inflight_tokens": -(-self.max_inflight_tokens // n)}
        if self.rate_limit:
            amount, _, period = self.rate_limit.partition("/")
            share["rate_limit"] = f"{-(-int(amount.split()[0]) // n)}/{period}"
        return self.model_copy(update=share)

    def to_env(self) -> dict[str, str]:
        """The settings as RERANKER_* variables, for a child process."""
        import json

        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, list):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"RERANKER_{name.upper()}"] = str(value)
        return env
