"""Deep ComfyUI checks: server health with hung-queue detection, and an end-to-end canary.

``comfyui`` reads ``/system_stats`` (online, versions, RAM, every device's VRAM) and
``/queue`` (running/pending). A ComfyUI whose executor is wedged still answers HTTP, so the
queue is tracked across runs: the same prompt running too long, or prompts pending while
nothing runs, fails the check. ``comfyui_canary`` proves the executor works by running a
model-free EmptyImage -> PreviewImage prompt. Shapes follow real ComfyUI 0.3.64 captures;
any other shape is a failed result with a reason, never an exception. ``http://`` URLs (the
usual loopback ComfyUI) are spoken over :mod:`guardian.checks.http.wire`, so a Guardian with
no https target never imports httpx; ``https://`` ones over httpx.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field

from guardian.checks.base import Check, CheckConfigBase, CheckContext, TargetUrl
from guardian.checks.comfyui.progress import ProgressProbe, ProgressSample, judge
from guardian.checks.http.body import BodyTooLarge, read_capped
from guardian.checks.http.check import wire_address
from guardian.checks.http.wire import ConnectTimeout, WireClient, WireError
from guardian.core.result import Outcome, Value

if TYPE_CHECKING:
    import httpx

DEFAULT_COMFYUI_URL = "http://127.0.0.1:8188"
MIB = 1024 * 1024
CANARY_MAX_BODY_BYTES = 4 * MIB
CANARY_FIRST_POLL = 0.05  # the canary takes milliseconds: poll fast first, then back off
MAX_MESSAGE = 240  # of an exception message in a reason; values keep more


class ComfyUICheckConfig(CheckConfigBase):
    """``/system_stats`` + ``/queue``: online, versions, busy, stuck jobs, memory pressure."""

    kind: Literal["comfyui"] = "comfyui"
    url: TargetUrl = DEFAULT_COMFYUI_URL
    vram_free_min_mb: float | None = Field(
        1024, ge=0, le=1e9, description="idle with less free VRAM on any GPU: memory pressure"
    )
    vram_critical_mb: float | None = Field(
        256, ge=0, le=1e9, description="less free VRAM than this: memory critical, even busy"
    )
    ram_free_min_mb: float | None = Field(
        None, ge=0, le=1e9, description="idle with less free RAM: memory pressure"
    )
    ram_critical_mb: float | None = Field(
        None, ge=0, le=1e9, description="less free RAM than this: memory critical, even busy"
    )
    leak_trend_runs: int = Field(
        5, ge=2, le=1000, description="idle free VRAM falling on this many runs in a row: a leak"
    )
    leak_trend_mb: float = Field(
        2048, gt=0, le=1e9, description="... and by at least this much in total"
    )
    stuck_running_after: float = Field(
        900, gt=0, le=7 * 86_400, description="a prompt running this long is judged for progress"
    )
    progress_window: float = Field(
        120, gt=0, le=86_400, description="stuck: no progress signal moved over this many seconds"
    )
    progress_cpu_min: float = Field(
        2.0, ge=0, le=1e6, description="CPU seconds per window the process tree must spend"
    )
    progress_gpu_min: float = Field(
        5.0, ge=0, le=100, description="GPU utilisation % of its processes that counts"
    )
    log_file: Path | None = Field(
        None, description="ComfyUI's own log to watch for new output (default: the service's)"
    )
    stuck_pending_after: float = Field(
        300,
        gt=0,
        le=7 * 86_400,
        description="pending > 0 with nothing running this long: queue stuck"
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, le=1 << 30)


class ComfyUICanaryConfig(CheckConfigBase):
    """Submit a model-free EmptyImage -> PreviewImage prompt and wait for it to finish."""

    kind: Literal["comfyui_canary"] = "comfyui_canary"
    url: TargetUrl = DEFAULT_COMFYUI_URL
    interval: float = Field(600.0, gt=0, le=86_400)
    timeout: float = Field(60.0, gt=0, le=3600)
    poll_interval: float = Field(0.5, gt=0, le=60)
    # A canary that times out on a slow-but-working box must not get working ComfyUI
    # killed: by default its failures are evidence (incident, report), not a restart cause.
    liveness: bool = Field(
        False, description="failures count towards restarting (off: evidence only)"
    )
    width: int = Field(64, ge=8, le=4096)
    height: int = Field(64, ge=8, le=4096)


class ComfyUIError(Exception):
    """What ComfyUI answered made no sense; the message is the failed result's reason."""


# ---------------------------------------------------------------------- HTTP plumbing


class _Api:
    """ComfyUI's API for one check (or one ladder run): capped bodies, a deadline per request,
    every error a reason.

    ``http://`` (ComfyUI's own default, on loopback) goes over
    :class:`~guardian.checks.http.wire.WireClient`: one kept-alive connection, closed after any
    failure so the next run proves a fresh connect, and no httpx in the process at all.
    ``https://`` (a ComfyUI behind a TLS proxy) goes over an httpx client. Neither trusts
    the environment: a proxy from it must never sit between us and loopback.
    """

    def __init__(self, url: str, timeout: float, max_body_bytes: int) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self.wire: WireClient | None = None
        self.tls: httpx.AsyncClient | None = None
        parts = urlsplit(self.url)
        if parts.scheme.lower() == "http":
            self.wire = WireClient(_basic_auth(parts.username, parts.password))
        else:
            from guardian.checks.http.httpxlib import httpx  # only https ComfyUI URLs load it

            self.tls = httpx.AsyncClient(base_url=self.url, timeout=timeout, trust_env=False)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Status and body, reading at most ``max_body_bytes``; ``body`` is sent as JSON."""
        try:
            if self.wire is not None:
                return await self._wire_request(self.wire, method, path, body)
            assert self.tls is not None
            return await self._tls_request(self.tls, method, path, body)
        except BodyTooLarge as exc:
            raise ComfyUIError(f"{path}: response {exc}") from exc

    async def _wire_request(
        self, wire: WireClient, method: str, path: str, body: Any
    ) -> tuple[int, bytes]:
        payload = None if body is None else _json_bytes(body)
        try:
            host, port, target = wire_address(self.url + path)
            async with asyncio.timeout(self.timeout):
                response = await wire.request(
                    method, host, port, target,
                    limit=self.max_body_bytes,
                    connect_timeout=self.timeout,
                    body=payload,
                    content_type=None if payload is None else "application/json",
                )  # fmt: skip
        except TimeoutError as exc:  # our deadline, in the connect or the exchange
            await wire.aclose()
            raise self._no_answer(
                path, "ConnectTimeout" if wire.connect_failed else "ReadTimeout"
            ) from exc
        except ConnectTimeout as exc:
            raise self._no_answer(path, "ConnectTimeout") from exc
        except WireError as exc:
            raise ComfyUIError(f"{method} {path} failed: {exc}") from exc
        except OSError as exc:
            if wire.connect_failed:
                raise ComfyUIError(
                    f"cannot connect to {self.url}: {_connect_reason(exc)}"
                ) from exc
            raise ComfyUIError(
                f"{method} {path} failed: {type(exc).__name__}: {_text(exc)}"
            ) from exc
        except UnicodeError as exc:  # a host name IDNA cannot encode
            raise ComfyUIError(f"cannot connect to {self.url}: {_text(exc)}") from exc
        return response.status, response.body or b""

    async def _tls_request(
        self, client: httpx.AsyncClient, method: str, path: str, body: Any
    ) -> tuple[int, bytes]:
        from guardian.checks.http.httpxlib import httpx

        try:
            async with client.stream(method, path, json=body) as response:
                return response.status_code, await read_capped(response, self.max_body_bytes)
        except httpx.TimeoutException as exc:
            raise self._no_answer(path, type(exc).__name__) from exc
        except httpx.ConnectError as exc:
            raise ComfyUIError(f"cannot connect to {self.url}: {_connect_reason(exc)}") from exc
        except httpx.HTTPError as exc:
            raise ComfyUIError(
                f"{method} {path} failed: {type(exc).__name__}: {_text(exc)}"
            ) from exc

    def _no_answer(self, path: str, what: str) -> ComfyUIError:
        return ComfyUIError(f"no answer from {self.url}{path} within {self.timeout:g}s ({what})")

    async def get_json(self, path: str) -> Any:
        """A 200 JSON body, or :class:`ComfyUIError` saying what was wrong with it."""
        status, body = await self.request("GET", path)
        if status != 200:
            raise ComfyUIError(f"GET {path} returned HTTP {status}{_snippet(body)}")
        return parse_json(body, path)

    async def aclose(self) -> None:
        if self.wire is not None:
            await self.wire.aclose()
        if self.tls is not None:
            await self.tls.aclose()


def _json_bytes(body: Any) -> bytes:
    """Compact JSON, as httpx's ``json=`` sends it (ComfyUI reads it with ``json.loads``)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _basic_auth(username: str | None, password: str | None) -> dict[str, str]:
    """``Authorization`` for credentials in the URL (``http://user:pw@host``), as httpx does."""
    if username is None:
        return {}
    pair = f"{unquote(username)}:{unquote(password or '')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}


def parse_json(body: bytes, path: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ComfyUIError(f"{path}: invalid JSON ({exc})") from exc


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _connect_reason(exc: BaseException) -> str:
    """'connection refused' rather than httpx's 'All connection attempts failed'."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return _text(exc)


def _snippet(body: bytes, limit: int = 120) -> str:
    text = " ".join(body[: limit * 4].decode("utf-8", "replace").split())
    return f": {text[:limit]}" if text else ""


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _mb(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else round(number / MIB, 1)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------------- parsers


def parse_system_stats(
    data: Any, vram_free_min_mb: float | None
) -> tuple[dict[str, Value], list[str]]:
    """Flat values from ``/system_stats`` and the reasons to call it degraded (low VRAM)."""
    where = "/system_stats"
    if not isinstance(data, dict):
        raise ComfyUIError(f"{where}: expected a JSON object, got {type(data).__name__}")
    system, devices = data.get("system"), data.get("devices")
    if not isinstance(system, dict):
        raise ComfyUIError(f"{where}: 'system' is missing or not an object")
    if not isinstance(devices, list):
        raise ComfyUIError(f"{where}: 'devices' is missing or not a list")
    python = _optional_str(system.get("python_version"))
    values: dict[str, Value] = {
        "online": True,
        "comfyui_version": _optional_str(system.get("comfyui_version")),
        "python_version": python.split(" ", 1)[0] if python else None,
        "pytorch_version": _optional_str(system.get("pytorch_version")),
        "ram_total_mb": _mb(system.get("ram_total")),
        "ram_free_mb": _mb(system.get("ram_free")),
        "devices": len(devices),
    }
    problems: list[str] = []
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            raise ComfyUIError(f"{where}: devices[{i}] is not an object")
        name, kind = device.get("name"), device.get("type")
        if not isinstance(name, str) or not isinstance(kind, str):
            raise ComfyUIError(f"{where}: devices[{i}] has no string 'name' and 'type'")
        vram_total, vram_free = _mb(device.get("vram_total")), _mb(device.get("vram_free"))
        if vram_total is None or vram_free is None:
            raise ComfyUIError(f"{where}: devices[{i}] vram_total/vram_free are not numbers")
        values[f"device_name.{i}"] = name
        values[f"device_type.{i}"] = kind
        values[f"vram_total_mb.{i}"] = vram_total
        values[f"vram_free_mb.{i}"] = vram_free
        values[f"torch_vram_total_mb.{i}"] = _mb(device.get("torch_vram_total"))
        values[f"torch_vram_free_mb.{i}"] = _mb(device.get("torch_vram_free"))
        if kind != "cpu" and vram_free_min_mb is not None and vram_free < vram_free_min_mb:
            problems.append(
                f"low VRAM on {name}: {vram_free:.0f} MB free < {vram_free_min_mb:g} MB"
            )
    return values, problems


QueueItem = tuple[Any, str]  # (number, prompt_id)


def parse_queue(data: Any) -> tuple[list[QueueItem], list[QueueItem]]:
    """Running and pending ``(number, prompt_id)`` pairs from ``/queue``."""
    if not isinstance(data, dict):
        raise ComfyUIError(f"/queue: expected a JSON object, got {type(data).__name__}")
    lists = []
    for key in ("queue_running", "queue_pending"):
        items = data.get(key)
        if not isinstance(items, list):
            raise ComfyUIError(f"/queue: '{key}' is missing or not a list")
        parsed: list[QueueItem] = []
        for item in items:
            if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[1], str)):
                raise ComfyUIError(f"/queue: {key} items are not [number, prompt_id, ...] arrays")
            parsed.append((item[0], item[1]))
        lists.append(parsed)
    return lists[0], lists[1]


# ---------------------------------------------------------------------- comfyui


class RunningTracker:
    """How long the running prompt has been running, as far as Guardian has seen it.

    ComfyUI executes one prompt at a time; the same ``(number, prompt_id)`` seen again is
    the same job (a restart renumbers from 0, which counts as a new one). The age counts
    from the first sighting, so after Guardian's own start it is a lower bound.
    """

    def __init__(self) -> None:
        self.current: QueueItem | None = None
        self.since = 0.0

    def see(self, running: list[QueueItem], now: float) -> float:
        """Update; seconds the running prompt has been seen running (0 when idle)."""
        if not running:
            self.current = None
            return 0.0
        if running[0] != self.current:
            self.current, self.since = running[0], now
        return now - self.since


def busy_reason(prompt_id: str, running_for: float) -> str:
    return f"busy: prompt {prompt_id} running for {running_for:.0f} s"


def _port(url: str) -> int | None:
    parts = urlsplit(url)
    try:
        return parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None


class ComfyUICheck:
    """``/system_stats`` + ``/queue`` + progress signals, remembering them between runs.

    Busy is a state: a prompt running is OK. It is *stuck* (FAILED, ``condition =
    stuck_running``) only after ``stuck_running_after`` and with no progress signal moving
    over ``progress_window`` (see :mod:`guardian.checks.comfyui.progress`). Pending prompts with
    nothing running for ``stuck_pending_after`` is ``stuck_pending``. Low memory while idle,
    or a leak trend, or critical memory at any time is DEGRADED ``memory_pressure``. The
    conditions are handled by the remediation ladder, gentlest action first.
    """

    def __init__(
        self, cfg: ComfyUICheckConfig, ctx: CheckContext, probe: ProgressProbe | None = None
    ) -> None:
        self.config: CheckConfigBase = cfg
        self.cfg = cfg
        self.ctx = ctx
        self.api = _Api(cfg.url, cfg.timeout, cfg.max_body_bytes)
        self.probe = probe or ProgressProbe(ctx, _port(cfg.url), cfg.log_file)
        self.tracker = RunningTracker()
        self._samples: list[ProgressSample] = []
        self._samples_for: QueueItem | None = None
        self._idle_since: float | None = None  # pending > 0, nothing running, since
        self._idle_vram: list[float] = []  # free VRAM on consecutive idle runs
        self._last_history: str | None = None

    async def run(self) -> Outcome:
        try:
            values, problems = parse_system_stats(
                await self.api.get_json("/system_stats"), self.cfg.vram_free_min_mb
            )
            running, pending = parse_queue(await self.api.get_json("/queue"))
        except ComfyUIError as exc:
            return Outcome.failed(str(exc), online=False)
        now = self.ctx.clock.monotonic()
        running_for = self.tracker.see(running, now)
        values["queue_running"] = len(running)
        values["queue_pending"] = len(pending)
        values["busy"] = bool(running)
        values["running_prompt_id"] = running[0][1] if running else None
        values["running_for_s"] = round(running_for, 1)
        history = await self._history_sig()
        memory = self._memory(values, idle=not running and not pending, history=history)
        if running:
            self._idle_since = None
            return await self._judge_running(running[0][1], running_for, values, history,
                                             memory, problems)
        self._samples.clear()
        self._samples_for = None
        if pending:
            stuck = self._track_pending(len(pending), now, values)
            if stuck:
                return Outcome.failed(stuck, condition="stuck_pending", **values)
        else:
            self._idle_since = None
        if memory is not None:
            return Outcome.degraded(memory, condition="memory_pressure", **values)
        if problems:
            return Outcome.degraded("; ".join(problems), **values)
        version = values["comfyui_version"] or "(unknown version)"
        return Outcome.ok(
            f"ComfyUI {version}: {len(running)} running, {len(pending)} pending", **values
        )

    async def _judge_running(
        self, prompt_id: str, running_for: float, values: dict[str, Value],
        history: str | None, memory: str | None, problems: list[str],
    ) -> Outcome:
        if self._samples_for != self.tracker.current:
            self._samples.clear()  # a new prompt: its evidence starts now
            self._samples_for = self.tracker.current
        self._samples.append(await self.probe.sample(history))
        cutoff = self._samples[-1].at - self.cfg.progress_window
        older = [i for i, sample in enumerate(self._samples) if sample.at <= cutoff]
        if older:  # keep the newest sample a window old (the baseline) and all after it
            self._samples = self._samples[older[-1]:]
        progress = judge(self._samples, self.cfg.progress_window, self.cfg.progress_cpu_min,
                         self.cfg.progress_gpu_min)
        if progress is not None:
            values.update(progress.values)
        busy = busy_reason(prompt_id, running_for)
        if running_for >= self.cfg.stuck_running_after and progress is not None:
            if progress.moved is False:
                return Outcome.failed(
                    f"queue stuck: prompt {prompt_id} running for {running_for:.0f} s with "
                    f"no progress over {self.cfg.progress_window:g} s ({progress.evidence})",
                    condition="stuck_running", **values,
                )
            if progress.moved is None:
                return Outcome.degraded(
                    f"{busy}; progress cannot be judged ({progress.evidence}: no process, "
                    "GPU or log signal visible)", **values,
                )
        if memory is not None:  # only critical memory is a condition while busy
            return Outcome.degraded(f"{busy}; {memory}", condition="memory_pressure", **values)
        if problems:
            busy = f"{busy} ({'; '.join(problems)})"
        return Outcome.ok(busy, **values)

    async def _history_sig(self) -> str | None:
        """The newest history entry's id: it changes whenever a prompt finishes."""
        try:
            data = await self.api.get_json("/history?max_items=1")
        except ComfyUIError:
            return None
        if not isinstance(data, dict):
            return None
        return next(reversed(data), "") if data else ""

    def _memory(self, values: dict[str, Value], *, idle: bool, history: str | None) -> str | None:
        """The memory-pressure reason, if any; sets ``memory_critical``. While busy only
        critical memory counts: a running job is expected to use its GPU."""
        cfg = self.cfg
        gpus = [i for i in range(int(values.get("devices") or 0))
                if values.get(f"device_type.{i}") != "cpu"]
        free = {i: float(values[f"vram_free_mb.{i}"] or 0.0) for i in gpus}
        ram_free = values.get("ram_free_mb")
        low: list[str] = []
        critical: list[str] = []
        for i, mb in free.items():
            name = values.get(f"device_name.{i}")
            if cfg.vram_critical_mb is not None and mb < cfg.vram_critical_mb:
                critical.append(f"VRAM on {name}: {mb:.0f} MB free < {cfg.vram_critical_mb:g} MB")
            elif cfg.vram_free_min_mb is not None and mb < cfg.vram_free_min_mb:
                low.append(f"VRAM on {name}: {mb:.0f} MB free < {cfg.vram_free_min_mb:g} MB")
        if isinstance(ram_free, float):
            if cfg.ram_critical_mb is not None and ram_free < cfg.ram_critical_mb:
                critical.append(f"RAM: {ram_free:.0f} MB free < {cfg.ram_critical_mb:g} MB")
            elif cfg.ram_free_min_mb is not None and ram_free < cfg.ram_free_min_mb:
                low.append(f"RAM: {ram_free:.0f} MB free < {cfg.ram_free_min_mb:g} MB")
        leak = self._leak_trend(sum(free.values()) if free else None, idle, history)
        if leak:
            low.append(leak)
        values["memory_critical"] = bool(critical)
        if critical:
            return "memory critical: " + "; ".join(critical + low)
        if idle and low:
            return "memory pressure while idle: " + "; ".join(low)
        return None

    def _leak_trend(self, vram_free: float | None, idle: bool, history: str | None) -> str | None:
        """Idle free VRAM falling run after run with no prompt finishing in between."""
        if vram_free is None or not idle or history != self._last_history:
            self._idle_vram.clear()
        self._last_history = history
        if vram_free is None or not idle:
            return None
        if self._idle_vram and vram_free >= self._idle_vram[-1]:
            self._idle_vram.clear()
        self._idle_vram.append(vram_free)
        runs = self.cfg.leak_trend_runs
        self._idle_vram = self._idle_vram[-runs:]
        drop = self._idle_vram[0] - vram_free
        if len(self._idle_vram) >= runs and drop >= self.cfg.leak_trend_mb:
            return f"VRAM leak: free VRAM fell {drop:.0f} MB over {runs} idle runs"
        return None

    def _track_pending(self, pending: int, now: float, values: dict[str, Value]) -> str | None:
        if self._idle_since is None:
            self._idle_since = now
        idle = now - self._idle_since
        values["idle_with_pending_s"] = round(idle, 1)
        if idle >= self.cfg.stuck_pending_after:
            return f"queue stuck: {pending} pending, nothing running for {idle:.0f}s"
        return None

    async def aclose(self) -> None:
        self.probe.close()
        await self.api.aclose()


# ---------------------------------------------------------------------- comfyui_canary


def canary_prompt(width: int, height: int, color: int) -> dict[str, Any]:
    """The model-free graph: runs in milliseconds on any machine, even CPU-only."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


class ComfyUICanaryCheck:
    """Submit the canary, poll ``/history/{id}`` until it has a status, judge it.

    The colour is random every time: ComfyUI serves an identical resubmit from its cache and
    runs no node, which would prove nothing. The engine bounds the whole run by cancelling
    it; a canary left behind by a cancelled run is removed from the queue on the next run.
    """

    def __init__(
        self, cfg: ComfyUICanaryConfig, ctx: CheckContext, rng: random.Random | None = None
    ) -> None:
        self.config: CheckConfigBase = cfg
        self.cfg = cfg
        self.ctx = ctx
        self.api = _Api(cfg.url, cfg.timeout, CANARY_MAX_BODY_BYTES)
        self.client_id = str(uuid.uuid4())
        self._rng = rng or random.Random()
        self._last_color: int | None = None
        self._unfinished: str | None = None
        self.tracker = RunningTracker()

    async def run(self) -> Outcome:
        try:
            return await self._run()
        except ComfyUIError as exc:
            return Outcome.failed(str(exc))

    def _next_color(self) -> int:
        color = self._rng.randrange(0, 0x1000000)
        while color == self._last_color:
            color = self._rng.randrange(0, 0x1000000)
        self._last_color = color
        return color

    async def _run(self) -> Outcome:
        await self._drop_unfinished()
        busy = await self._busy(None)
        if busy is not None:
            return busy
        clock = self.ctx.clock
        started = clock.monotonic()
        prompt_id = await self._submit()
        self._unfinished = prompt_id
        delay = CANARY_FIRST_POLL
        while True:
            await clock.sleep(min(delay, self.cfg.poll_interval))
            delay *= 2
            entry = await self._history(prompt_id)
            if entry is None:
                busy = await self._busy(prompt_id)
                if busy is not None:  # a job came in first: ours waits behind it
                    await self._drop_unfinished()
                    return busy
                continue
            self._unfinished = None
            return judge_canary(entry, prompt_id, clock.monotonic() - started)

    async def _busy(self, own: str | None) -> Outcome | None:
        """SKIPPED when the queue holds a job that is not this canary: the canary would only
        wait behind it, and its timeout would say nothing about ComfyUI's health."""
        running, pending = parse_queue(await self.api.get_json("/queue"))
        running_for = self.tracker.see(running, self.ctx.clock.monotonic())
        foreign = [item for item in running if item[1] != own]
        if foreign:
            prompt_id = foreign[0][1]
            return Outcome.skipped(
                busy_reason(prompt_id, running_for), busy=True, running_prompt_id=prompt_id,
                running_for_s=round(running_for, 1),
            )
        if own is None and pending:
            return Outcome.skipped(
                f"busy: {len(pending)} prompts pending", busy=True, running_prompt_id=None,
                running_for_s=0.0,
            )
        return None

    async def _submit(self) -> str:
        body = {
            "prompt": canary_prompt(self.cfg.width, self.cfg.height, self._next_color()),
            "client_id": self.client_id,
            "extra_data": {"note": "guardian-canary"},
        }
        status, raw = await self.api.request("POST", "/prompt", body)
        if status == 400:
            raise ComfyUIError(f"canary rejected by ComfyUI: {describe_prompt_error(raw)}")
        if status != 200:
            raise ComfyUIError(f"POST /prompt returned HTTP {status}{_snippet(raw)}")
        data = parse_json(raw, "/prompt")
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise ComfyUIError("/prompt: answer has no string 'prompt_id'")
        return prompt_id

    async def _history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished history entry, or None while the prompt is queued or running."""
        path = f"/history/{prompt_id}"
        data = await self.api.get_json(path)
        if not isinstance(data, dict):
            raise ComfyUIError(f"{path}: expected a JSON object, got {type(data).__name__}")
        if not data:
            return None  # {} while queued or running
        entry = data.get(prompt_id)
        if not isinstance(entry, dict):
            raise ComfyUIError(f"{path}: answer has no entry for prompt {prompt_id}")
        return entry if isinstance(entry.get("status"), dict) else None

    async def _drop_unfinished(self) -> None:
        """Best effort: take a canary abandoned by a cancelled run off the queue."""
        if self._unfinished is None:
            return
        prompt_id, self._unfinished = self._unfinished, None
        with contextlib.suppress(ComfyUIError):
            await self.api.request("POST", "/queue", {"delete": [prompt_id]})

    async def aclose(self) -> None:
        await self.api.aclose()


def describe_prompt_error(raw: bytes) -> str:
    """``type: message`` from a 400 answer to ``POST /prompt``, plus the first node error."""
    try:
        data = parse_json(raw, "/prompt")
    except ComfyUIError:
        return f"HTTP 400{_snippet(raw)}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return f"HTTP 400{_snippet(raw)}"
    text = f"{error.get('type', 'unknown')}: {error.get('message', '')}"
    node_errors = data.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, node in node_errors.items():
            errors = node.get("errors") if isinstance(node, dict) else None
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                first = errors[0]
                text += f" (node {node_id}: {first.get('message')}: {first.get('details')})"
                break
    return _clip(text)


def judge_canary(entry: dict[str, Any], prompt_id: str, latency: float) -> Outcome:
    """The outcome of a finished canary from its history entry."""
    status = entry["status"]
    status_str = status.get("status_str")
    messages = status.get("messages")
    events: dict[str, dict[str, Any]] = {}
    if isinstance(messages, list):
        for message in messages:
            if (isinstance(message, list) and len(message) == 2 and isinstance(message[0], str)
                    and isinstance(message[1], dict)):
                events[message[0]] = message[1]
    latency_ms = round(latency * 1000, 1)
    values: dict[str, Value] = {"latency_ms": latency_ms, "prompt_id": prompt_id}
    if status_str == "success":
        start = _number(events.get("execution_start", {}).get("timestamp"))
        end = _number(events.get("execution_success", {}).get("timestamp"))
        if start is not None and end is not None:
            values["exec_ms"] = end - start
        return Outcome.ok(f"canary finished in {latency_ms:.0f} ms", **values)
    if status_str != "error":
        return Outcome.failed(f"canary ended with unexpected status {status_str!r}", **values)
    if "execution_error" in events:
        err = events["execution_error"]
        exc_type = str(err.get("exception_type") or "error")
        values["exception_type"] = exc_type
        values["node_type"] = _optional_str(err.get("node_type"))
        values["exception_message"] = _clip(str(err.get("exception_message") or ""), 2000)
        where = f"node {err.get('node_id')} ({err.get('node_type')})"
        message = _clip(str(err.get("exception_message") or ""))
        return Outcome.failed(f"canary failed at {where}: {exc_type}: {message}", **values)
    if "execution_interrupted" in events:
        err = events["execution_interrupted"]
        return Outcome.failed(
            f"canary interrupted at node {err.get('node_id')} ({err.get('node_type')})", **values
        )
    return Outcome.failed("canary ended with status error", **values)


def create(cfg: ComfyUICheckConfig | ComfyUICanaryConfig, ctx: CheckContext) -> Check:
    """The runtime check for either ComfyUI config kind."""
    if isinstance(cfg, ComfyUICanaryConfig):
        return ComfyUICanaryCheck(cfg, ctx)
    return ComfyUICheck(cfg, ctx)
