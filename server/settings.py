"""The one settings object shared by the launcher and the shim.

Every field is an environment variable `RERANKER_<FIELD>` and a launcher flag `--<field-with-dashes>`.
The launcher hands its settings to the shim process through the same environment variables, so a
value set once (Helm value, systemd Environment=, CLI flag) reaches both.

The fields are grouped by concern, one class each (`ModelSettings`, `EngineSettings`, ...);
`Settings` inherits them all, so every field stays one flat name (`settings.max_model_len`,
`RERANKER_MAX_MODEL_LEN`, `--max-model-len`) and a group is where to read what belongs together.
A group holds its own validators; what spans groups (derived values, cross-group checks) lives on
`Settings`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.limit_spec import parse_limit, storage_scheme

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEMO_MODEL_DIR = "models/qwen3-reranker-tiny"


def _split_list(value: Any) -> Any:
    """Lists come from env vars as JSON (`["a","b"]`) or as comma/space separated text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in text.replace(",", " ").split() if part]
    return value


StrList = Annotated[list[str], NoDecode]


def _networks(value: list[str]) -> list[str]:
    for cidr in value:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"not an IP network: {cidr!r} (write CIDRs such as 10.0.0.0/8)") from None
    return value


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ProcessSettings(BaseModel):
    """What runs, and the shim's own process: listener, workers, logs, playground."""

    mode: Literal["all", "vllm", "shim"] = Field(
        "all", description="all: vLLM + shim supervised together; vllm: engine only; shim: API only")
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = Field(0, description="shim worker processes; 0 = auto (one per 4 CPUs, 1..4)")
    log_level: str = "INFO"
    log_documents: bool = Field(False, description="log document and query text (off: privacy)")
    # A static page at / and /playground to try the reranker in a browser. The page itself is public;
    # the scoring calls it makes carry the user's key and get the same auth as any client.
    playground: bool = Field(True, description="serve the browser playground at / and /playground")


class ModelSettings(BaseModel):
    """Which model is served, under which name, with which tokenizer."""

    model: str = Field("", description="Hub id or local path; empty = offline demo model")
    served_model_name: str = Field("", description="Name reported by the API; default from model")
    tokenizer: str = Field("", description="Tokenizer path/id for the shim; default = model")
    qwen3_overrides: Literal["auto", "on", "off"] = Field(
        "auto", description="Qwen3 --hf-overrides: auto = only for original (CausalLM) checkpoints")
    model_family: Literal["auto", "text", "vl"] = Field(
        "auto", description="text: Qwen3-Reranker; vl: Qwen3-VL-Reranker (text and images); auto = "
        "from the checkpoint's config.json")


class EngineSettings(BaseModel):
    """vLLM engine flags: the launcher maps these, and only these, to vLLM's argv
    (launcher/vllm_args.py)."""

    vllm_host: str = "127.0.0.1"
    vllm_port: int = 8001
    vllm_url: str = Field("", description="shim mode: base URL of a running vLLM, or several "
                          "(comma separated: one per engine, work goes to the least loaded)")
    max_model_len: int = 8192
    dtype: str = "auto"
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    # the GPU default is measured in benchmarks/RESULTS.md ("Engine levers")
    max_num_batched_tokens: int | None = Field(
        None, description="unset: 32768 when a GPU is visible, else vLLM's")
    enable_prefix_caching: bool = Field(True, description="the shared instruction+query prefix")
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    async_scheduling: bool = Field(
        True, description="GPU: vLLM --async-scheduling (the next step is scheduled while the GPU "
        "runs this one); --no-async-scheduling passes vLLM's --no-async-scheduling")
    cudagraph_max_tokens: int = Field(
        16384, ge=0, description="GPU: CUDA graphs captured for engine steps up to this many tokens "
        "(vLLM's own sizes stop at 512, and a reranker's steps are prefills of thousands, run op by "
        "op without a graph); 0 = vLLM's sizes")
    vllm_shutdown_timeout: int = Field(30, description="vLLM --shutdown-timeout: drain seconds")
    extra_vllm_args: StrList = Field(default_factory=list, description="passed to vLLM verbatim")

    @field_validator("extra_vllm_args", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)


class GpuSharingSettings(BaseModel):
    """Several GPUs in one pod, or several engines on one GPU (docs/deployment.md, "Several GPUs
    per host" and "Filling one GPU").

    engines: N vLLM processes, engine i on port vllm_port+i and GPUs i*TP..(i+1)*TP-1
    (CUDA_VISIBLE_DEVICES), each supervised and restarted on its own; the shim sends every call to
    the healthy engine with the fewest outstanding tokens and moves a failed call to another.
    data-parallel: one vLLM with --data-parallel-size N (vLLM balances inside; one URL, one health,
    one restart for all). Several engines on one GPU: small requests are bound by vLLM's one
    engine-core process (one CPU core busy while the GPU idles), so more engine cores on the same
    GPU raise what one GPU serves.
    """

    engines: int = Field(1, ge=1, description="engine replicas per pod, each tensor_parallel_size "
                         "GPUs (so GPUs = engines x tensor_parallel_size)")
    engines_per_gpu: int = Field(1, ge=1, description="engines sharing one GPU (tensor_parallel_size "
                                 "1 only); each gets gpu_memory_utilization / engines_per_gpu and a "
                                 "fixed KV cache (kv_cache_memory_bytes, auto: sized for the share)")
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="vLLM --kv-cache-memory-bytes: a fixed KV cache, no memory profiling "
        "(auto when engines share a GPU: a few engine steps of tokens, within the engine's share)")
    fill_gpu: bool = Field(
        True, description="GPU, when engines_per_gpu and cuda_mps are left unset and the pod runs "
        "one engine on one GPU: the launcher runs 4 engines on it under its MPS daemon if the model "
        "has at most 2B parameters, the GPU at least 70 GiB and the pod at least 12 CPUs (more "
        "small requests, the same bulk throughput: docs/deployment.md, \"Filling one GPU\"), else "
        "one engine; one engine too where the MPS daemon cannot start or the node provides MPS")
    cuda_mps: bool = Field(
        False, description="GPU: run the launcher's engines under an NVIDIA MPS control daemon that "
        "the launcher starts and stops (kernels of engines sharing a GPU then run concurrently); "
        "leave off where the node already provides MPS (device plugin sharing)")
    multi_gpu_mode: Literal["engines", "data-parallel"] = Field(
        "engines", description="engines: one vLLM per replica behind the shim (least outstanding "
        "tokens); data-parallel: one vLLM with --data-parallel-size engines")


class StartupSettings(BaseModel):
    """Start-up time and deterministic scores (launcher/vllm_args.py `vllm_environment`;
    docs/deployment.md, "Start-up and deterministic scores")."""

    cache_dir: str = Field(
        ".cache", description="persistent, writable: vLLM's model-info, torch.compile and Triton "
        "caches live in <cache_dir>/vllm (VLLM_CACHE_ROOT); '' = vLLM's own defaults")
    cache_seed: str = Field(
        "", description="a read-only cache made at image build (python -m launcher.prewarm): files "
        "cache_dir lacks are copied from it at start, so a fresh volume skips vLLM's model-info "
        "inspection; '' = none")
    vllm_fork_engine: bool = Field(
        True, description="GPU: fork vLLM's engine core instead of a fresh interpreter (a faster start)")
    deterministic: bool = Field(
        True, description="bit-identical scores whatever the batch or load: VLLM_BATCH_INVARIANT=1 "
        "on GPU (costs some throughput) and P(yes) computed in the shim from vLLM's logit")
    aot_compile: bool = Field(
        True, description="GPU, deterministic: keep vLLM's ahead-of-time compiled model, so a warm "
        "start loads it instead of tracing the model again (vLLM 0.26 turns it off under "
        "batch-invariant kernels; launcher/vllm_entry.py)")


class SupervisionSettings(BaseModel):
    """How the launcher waits for and restarts vLLM (launcher/supervise.py)."""

    vllm_startup_timeout: float = Field(1800.0, description="seconds to wait for vLLM /health")
    vllm_max_restarts: int = Field(5, description="restarts within restart_window before giving up")
    vllm_restart_window: float = 600.0
    vllm_restart_backoff: float = Field(2.0, description="first backoff; doubles, capped at 30 s")


class RequestSettings(BaseModel):
    """What one request may hold, how it is cut, and how the shim calls the engine for it."""

    default_instruction: str = DEFAULT_INSTRUCTION
    engine_api: Literal["tokens", "rerank"] = Field(
        "tokens", description="tokens: shim renders+tokenises, vLLM /classify; rerank: vLLM /rerank")
    max_documents: int = Field(1000, description="documents per request")
    max_images_per_part: int = Field(
        4, ge=1, description="Qwen3-VL-Reranker: images in one query or one document")
    max_request_tokens: int = Field(2_000_000, description="document tokens per request (after cuts)")
    max_query_tokens: int = Field(2048, description="longer queries are cut to this")
    max_doc_tokens: int = Field(0, description="per-document token cut; 0 = what max_model_len allows")
    chunk_long_documents: bool = Field(False, description="score long docs as chunks (max over them)")
    max_chunks_per_doc: int = Field(10, description="chunk cap when chunking")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="larger bodies get 413")
    pairs_per_engine_call: int = Field(64, description="large requests go to vLLM in concurrent slices")
    upstream_timeout: float = Field(120.0, description="seconds for one call to vLLM")


class DispatchSettings(BaseModel):
    """Cross-request batching and priority dispatch (server/scoring/dispatch.py). The defaults are
    measured: benchmarks/RESULTS.md, "Mixed traffic: bulk cut to the budget" and "Mixed traffic and
    the rest, final defaults"."""

    batching: bool = Field(True, description="coalesce concurrent requests into shared /classify "
                           "calls and dispatch interactive work first (engine_api=tokens)")
    batch_max_tokens: int = Field(16384, description="prompt tokens per /classify call")
    batch_max_prompts: int = Field(512, description="prompts per /classify call")
    batch_fill_ms: float = Field(1.0, description="while calls are in flight, let a batch fill "
                                 "this long before sending it (an idle engine gets work at once)")
    # One engine step by default: the bulk in flight then fills about one vLLM step, so a small
    # request waits for about one step; larger budgets keep more bulk throughput and cost
    # interactive latency.
    engine_token_budget: int = Field(
        0, description="while interactive work is around, bulk work is held in the shim once this "
        "many prompt tokens are in an engine (per engine; all shim workers together: each holds "
        "its share); 0 = auto: one engine step, max_num_batched_tokens (32768 on GPU)")
    bulk_budget_factor: int = Field(4, description="with no interactive work for "
                                    "interactive_memory_s, bulk may use this many times the budget")
    interactive_memory_s: float = Field(2.0, description="how long one interactive request keeps "
                                        "the tight bulk budget in force")
    bulk_split_to_budget: bool = Field(
        True, description="while the tight budget is in force (interactive work seen), cut a bulk "
        "request to the room left in the worker's share of engine_token_budget, so the budget binds "
        "for large requests too; bulk alone goes in whole calls. Scores stay "
        "bit-identical on GPUs (batch-invariant mode); the CPU build may differ by 1 ulp for a "
        "request cut across calls")
    engine_max_calls: int = Field(4, description="/classify calls in flight at once, per shim "
                                  "worker and engine")
    interactive_max_tokens: int = Field(
        4096, description="requests with at most this many prompt tokens are interactive "
        "(dispatched first); larger ones are bulk. A caller may also say X-Priority: bulk|interactive")
    bulk_max_wait_s: float = Field(1.0, description="bulk work waiting this long goes before "
                                   "interactive work (no class starves)")


class AdmissionSettings(BaseModel):
    """Admission control and the autoscaling signal (server/ops/admission.py).

    In-flight work is counted in (query, document) pairs and tokens, per engine: a pod with N
    engines admits N times as much, engines sharing a GPU counting as one (`Settings.per_worker`).

    reranker_engine_saturation = prompt tokens in flight to the engine / saturation_capacity_tokens;
    1.0 is the in-flight work at which the engine reaches its full throughput, past it requests only
    queue. The default is measured for Qwen3-Reranker-0.6B bf16 on one GPU (benchmarks/RESULTS.md,
    "Targets"): about two of vLLM's 32k-token GPU batches. Re-measure for bigger models or other
    GPUs (the in-flight tokens where pairs/s stops growing). Per engine (one GPU, or one
    tensor-parallel group): a pod of N engines is full at N times this; engines sharing one GPU
    count as that GPU (`Settings.capacity_units`). Not per worker.
    """

    max_inflight_pairs: int = 4096
    max_inflight_tokens: int = 0  # 0 = no token bound
    max_inflight_image_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=0, description="decoded image bytes in flight (width x height x "
        "3 per image), per engine; 0 = no bound")
    retry_after_seconds: int = 1
    saturation_capacity_tokens: int = Field(
        75_000, gt=0, description="in-flight prompt tokens that fill one engine (saturation 1.0)")


class RateLimitSettings(BaseModel):
    """Per-client rate limits (server/ops/ratelimit.py; docs/deployment.md, "Rate limits").

    Off unless set: a typical caller is one backend service behind one IP (or a proxy), and a
    default per-IP limit throttles exactly that caller. Overload is handled by admission control.
    """

    rate_limit: str = Field("", description='"N/second|minute|hour|day" per API key when auth is '
                            'on, else per client IP; empty = off')
    rate_limit_storage: str = Field(
        "memory://", description="limits storage URI: memory:// (per process) or a shared "
        "redis://host:6379/0, rediss://, redis+sentinel://, redis+cluster://")
    rate_limit_storage_timeout: float = Field(
        0.2, gt=0, description="seconds per shared-store call; slower calls fail open")
    trusted_proxies: StrList = Field(default_factory=list, description="CIDRs allowed to set X-Forwarded-For")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        value = value.strip()
        if value:
            parse_limit(value)  # raises ValueError with the accepted forms
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_limit_storage(cls, value: str) -> str:
        value = value.strip() or "memory://"
        if value != "memory://":
            storage_scheme(value)  # raises ValueError naming the supported schemes
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _networks(value)


class AuthSettings(BaseModel):
    """Auth: off unless keys or a JWT key are configured (server/ops/auth.py)."""

    api_keys: StrList = Field(default_factory=list)
    api_keys_file: Path | None = None
    jwt_secret: str = Field("", description="HS256 shared secret")
    jwt_public_key: str = Field("", description="RS256 public key (PEM text or file path)")
    jwt_issuer: str = ""
    jwt_audience: str = ""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        return _split_list(value)


class CacheSettings(BaseModel):
    """The score cache (off by default)."""

    score_cache: bool = False
    score_cache_entries: int = 100_000
    score_cache_ttl: float = 3600.0


# Image formats the decoder may be asked to open (Pillow's names). Each is a decoder that hostile
# bytes reach, so the list is short; TIFF, SVG and the rest are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


class ImageSettings(BaseModel):
    """Image inputs of vision-language rerankers (server/images/; docs/deployment.md, "Image
    input safety"). data: URLs and base64 are always read, within the size and pixel limits;
    http(s) URLs only with image_fetch on, from the hosts in image_fetch_hosts, never from a
    private, loopback, link-local, multicast or reserved address unless its network is listed in
    image_fetch_private_networks."""

    image_max_bytes: int = Field(10 * 1024 * 1024, ge=1, description="encoded bytes of one image "
                                 "(sent or fetched); larger ones get 413")
    image_max_pixels: int = Field(4096 * 4096, ge=1, description="width x height of one image, "
                                  "checked from its header before it is decoded; larger ones get 413")
    image_max_request_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="decoded bytes (width x height x 3) of all the images "
        "of one request together; more gets 413")
    image_formats: StrList = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP", "GIF"],
                                   description=f"image formats accepted (of {', '.join(IMAGE_FORMATS)}); "
                                   "GIF and animated WebP: the first frame")
    image_fetch: bool = Field(False, description="fetch http(s) image URLs (from image_fetch_hosts)")
    image_fetch_hosts: StrList = Field(
        default_factory=list, description="hosts image URLs may name: exact names or IPs, "
        "*.example.com (its subdomains), or * (any host whose addresses are public)")
    image_fetch_private_networks: StrList = Field(
        default_factory=list, description="CIDRs of non-public addresses image URLs may reach "
        "anyway (an internal image store: 10.1.2.0/24); empty = public addresses only")
    image_fetch_timeout: float = Field(10.0, gt=0, description="seconds for one image fetch in all "
                                       "(DNS, connect, redirects, the whole body)")
    image_fetch_max_redirects: int = Field(3, ge=0, description="redirects followed per image URL, "
                                           "each hop checked like the first")

    @field_validator("image_formats", "image_fetch_hosts", "image_fetch_private_networks", mode="before")
    @classmethod
    def _image_lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("image_formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        formats = [name.upper() for name in value]
        unknown = [name for name in formats if name not in IMAGE_FORMATS]
        if unknown:
            raise ValueError(f"unknown image formats {unknown}: choose from {', '.join(IMAGE_FORMATS)}")
        return formats

    @field_validator("image_fetch_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        hosts = []
        for raw in value:
            host = raw.strip().lower().rstrip(".")
            bare = host.strip("[]")
            if host != "*" and not _is_ip(bare) and not _HOST_NAME.fullmatch(host.removeprefix("*.")):
                raise ValueError(f"not a host pattern: {raw!r} (a host name in ASCII/punycode, an IP "
                                 "address, *.example.com for its subdomains, or *)")
            hosts.append(bare)
        return hosts

    @field_validator("image_fetch_private_networks")
    @classmethod
    def _private_networks(cls, value: list[str]) -> list[str]:
        return _networks(value)

    @model_validator(mode="after")
    def _fetching_needs_hosts(self) -> ImageSettings:
        if self.image_fetch and not self.image_fetch_hosts:
            raise ValueError("image_fetch needs image_fetch_hosts: the hosts image URLs may name "
                             "(or * for any host with public addresses)")
        return self


class DrainSettings(BaseModel):
    """Drain and keep-alive, lossless for pooled clients (server/ops/drain.py).

    SIGTERM: readiness fails at once; for drain_window s everything is served with
    `Connection: close` (pooled clients move off); then the listener closes, connections quiet for
    the whole window are closed, and in-flight requests get drain_timeout. 5 s: at least httpx's
    idle expiry (5 s), so a connection quiet that long is one its client has dropped.
    The shim must outlive every client's idle expiry (httpx 5 s, nginx upstream 20 s here,
    ingress-nginx and AWS ALB 60 s, Go's http.DefaultTransport 90 s): 100 s. Behind a proxy with a
    longer one (Google Cloud LB: 600 s), raise it above that.
    """

    drain_window: float = Field(5.0, ge=0, description="seconds of Connection: close serving after SIGTERM")
    drain_delay: float | None = Field(None, ge=0, description="deprecated name of drain_window")
    drain_timeout: float = Field(60.0, description="seconds in-flight requests may take to finish")
    keep_alive_timeout: int = Field(100, ge=1, description="seconds an idle keep-alive connection is kept")

    @model_validator(mode="after")
    def _drain_delay_is_the_old_name_of_drain_window(self) -> DrainSettings:
        if self.drain_delay is not None and "drain_window" not in self.model_fields_set:
            self.drain_window = self.drain_delay
        return self


# Pydantic lists inherited fields base-most first (the reverse of the bases' order), so the groups
# are named here last-to-first: `--help` and the RERANKER_* dump then read in the order above.
class Settings(DrainSettings, ImageSettings, CacheSettings, AuthSettings, RateLimitSettings, AdmissionSettings,
               DispatchSettings, RequestSettings, SupervisionSettings, StartupSettings,
               GpuSharingSettings, EngineSettings, ModelSettings, ProcessSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore", validate_default=True)

    @model_validator(mode="after")
    def _engines_share_a_gpu_only_as_single_gpu_engines(self) -> Settings:
        if self.engines_per_gpu > 1 and (self.tensor_parallel_size > 1
                                         or self.multi_gpu_mode != "engines"):
            raise ValueError("engines_per_gpu > 1 needs tensor_parallel_size 1 and multi_gpu_mode "
                             "engines (each engine a vLLM process of its own on a shared GPU)")
        return self

    # --- derived -------------------------------------------------------------------------------
    @property
    def shim_workers(self) -> int:
        if self.workers > 0:
            return self.workers
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
    def upstream_urls(self) -> list[str]:
        """Where the shim reaches vLLM, one URL per engine: vllm_url (one or several), else the
        engines this launcher starts: vllm_port, vllm_port+1, ... in mode `engines`, one vLLM in
        mode `data-parallel` (a wildcard bind address is reached on loopback)."""
        if self.vllm_url:
            return [url.rstrip("/") for url in _split_list(self.vllm_url)]
        host = "127.0.0.1" if self.vllm_host in ("0.0.0.0", "::", "") else self.vllm_host
        return [f"http://{host}:{port}" for port in self.vllm_ports]

    @property
    def upstream_url(self) -> str:
        """The first engine's URL (the only one unless engines > 1)."""
        return self.upstream_urls[0]

    @property
    def vllm_ports(self) -> list[int]:
        """The ports of the vLLM processes this launcher starts."""
        n = self.engines if self.multi_gpu_mode == "engines" else 1
        return [self.vllm_port + i for i in range(n)]

    @property
    def engine_weight(self) -> int:
        """Engine replicas behind one URL: a data-parallel vLLM holds `engines` of them, so its
        token budget and call slots are that many times one engine's."""
        return self.engines if self.multi_gpu_mode == "data-parallel" else 1

    @property
    def engine_count(self) -> int:
        """Engine replicas behind this shim (1 unless several GPUs): what per-engine capacity
        settings (saturation, admission) are multiplied by."""
        return len(self.upstream_urls) * self.engine_weight

    @property
    def capacity_units(self) -> float:
        """What per-engine capacity settings (saturation, admission bounds) are multiplied by:
        the engine replicas, where engines sharing one GPU count as that one GPU (they share its
        throughput: several engines on a GPU serve about the bulk tokens of one)."""
        return self.engine_count / self.engines_per_gpu

    @property
    def engine_token_budget_resolved(self) -> int:
        if self.engine_token_budget > 0:
            return self.engine_token_budget
        # one engine step of the GPU: the bulk in flight fills about one vLLM step, so a small
        # request waits for about one step (benchmarks/RESULTS.md, "Mixed traffic"). Engines
        # sharing a GPU share its steps, so each gets its share of the one step.
        step = self.max_num_batched_tokens or (32768 if Path("/dev/nvidiactl").exists() else 8192)
        return max(1, step // self.engines_per_gpu)

    def per_worker(self) -> Settings:
        """The share of one shim worker: in-flight bounds are per engine and per process, so
        with E engines and N workers each worker enforces E/N of them (rounded up): the bounds
        exist to keep queueing time short, and E engines drain work E times as fast. Rate limits
        are not split here: the rate limiter does it itself (server/ops/ratelimit.py), and only
        for in-process counters; a shared store holds one exact budget for every worker of every
        replica."""
        n, engines, units = self.shim_workers, self.engine_count, self.capacity_units
        if n <= 1 and engines == 1:
            return self
        # The engine token budget is an engine's, so each worker holds its share of it: with
        # four workers each holding the whole budget, the engine could hold 4x the bulk tokens
        # the operator configured. (The split binds only with bulk_split_to_budget: uncut bulk
        # items were larger than a worker's share, so each worker had a whole one in flight.)
        # (The dispatcher applies it to each engine: it is not multiplied by the engines.)
        share = {"max_inflight_pairs": math.ceil(self.max_inflight_pairs * units / n),
                 "max_inflight_tokens": math.ceil(self.max_inflight_tokens * units / n),
                 "max_inflight_image_bytes": math.ceil(self.max_inflight_image_bytes * units / n),
                 "engine_token_budget": -(-self.engine_token_budget_resolved // n)}
        return self.model_copy(update=share)

    def to_env(self) -> dict[str, str]:
        """The settings as RERANKER_* variables, for a child process."""
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
