"""A typed client for ComfyUI's HTTP API, shared by everything in Guardian that talks to it.

The ``comfyui`` check, the canary, the remediation rungs and the queue journal all speak to
ComfyUI through :class:`ComfyUIClient`: every body read is capped, every request has a
deadline, and every failure is a :class:`ComfyUIError` whose message is a reason fit for a
result. Shapes follow real ComfyUI 0.3.64 captures; any other shape is an error with a reason,
never an exception of another kind. ``http://`` URLs (the usual loopback ComfyUI) are spoken
over :mod:`guardian.checks.http.wire`, so a Guardian with no https target never imports httpx;
``https://`` ones over httpx.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from guardian.checks.http.body import BodyTooLarge, read_capped
from guardian.checks.http.check import wire_address
from guardian.checks.http.wire import ConnectTimeout, WireClient, WireError
from guardian.core.result import ReasonClass, Value

if TYPE_CHECKING:
    import httpx

MIB = 1024 * 1024
MAX_MESSAGE = 240  # of an exception message in a reason; values keep more


class ComfyUIError(Exception):
    """What ComfyUI answered made no sense; the message is the failed result's reason and
    ``reason_class`` its class (the client knows which failure it met)."""

    def __init__(self, message: str, reason_class: ReasonClass = "invalid_response") -> None:
        super().__init__(message)
        self.reason_class: ReasonClass = reason_class


# ---------------------------------------------------------------------- HTTP plumbing


class SubmitRejected(ComfyUIError):
    """``POST /prompt`` answered 400: ComfyUI's own ``error.type`` and message."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class ComfyUIClient:
    """ComfyUI's API for one user (a check, a canary, a ladder run, the queue journal): capped
    bodies, a deadline per request, every error a :class:`ComfyUIError` with a reason.

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
            raise ComfyUIError(f"{method} {path} failed: {exc}", "connection") from exc
        except OSError as exc:
            if wire.connect_failed:
                raise ComfyUIError(
                    f"cannot connect to {self.url}: {_connect_reason(exc)}", "connection"
                ) from exc
            raise ComfyUIError(
                f"{method} {path} failed: {type(exc).__name__}: {_text(exc)}", "connection"
            ) from exc
        except UnicodeError as exc:  # a host name IDNA cannot encode
            raise ComfyUIError(f"cannot connect to {self.url}: {_text(exc)}", "connection") from exc
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
            raise ComfyUIError(
                f"cannot connect to {self.url}: {_connect_reason(exc)}", "connection"
            ) from exc
        except httpx.HTTPError as exc:
            raise ComfyUIError(
                f"{method} {path} failed: {type(exc).__name__}: {_text(exc)}", "connection"
            ) from exc

    def _no_answer(self, path: str, what: str) -> ComfyUIError:
        return ComfyUIError(
            f"no answer from {self.url}{path} within {self.timeout:g}s ({what})", "timeout"
        )

    async def get_json(self, path: str) -> Any:
        """A 200 JSON body, or :class:`ComfyUIError` saying what was wrong with it."""
        status, body = await self.request("GET", path)
        if status != 200:
            raise ComfyUIError(f"GET {path} returned HTTP {status}{_snippet(body)}", "http_status")
        return parse_json(body, path)

    async def system_stats(
        self, vram_free_min_mb: float | None
    ) -> tuple[dict[str, Value], list[str]]:
        """``GET /system_stats`` flattened (see :func:`parse_system_stats`)."""
        return parse_system_stats(await self.get_json("/system_stats"), vram_free_min_mb)

    async def queue(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """``GET /queue``: running and pending ``(number, prompt_id)`` pairs."""
        return parse_queue(await self.get_json("/queue"))

    async def queue_raw(self) -> bytes:
        """``GET /queue``'s body as read (bounded by ``max_body_bytes``)."""
        status, body = await self.request("GET", "/queue")
        if status != 200:
            raise ComfyUIError(f"GET /queue returned HTTP {status}{_snippet(body)}")
        return body

    async def has_history(self, prompt_id: str) -> bool:
        """Whether ComfyUI's history holds ``prompt_id`` (finished, or failed)."""
        path = f"/history/{quote(prompt_id, safe='')}"
        data = await self.get_json(path)
        return isinstance(data, dict) and prompt_id in data

    async def newest_history_id(self) -> str | None:
        """The newest history entry's id ('' for an empty history), None when unreadable:
        it changes whenever a prompt finishes."""
        try:
            data = await self.get_json("/history?max_items=1")
        except ComfyUIError:
            return None
        if not isinstance(data, dict):
            return None
        return next(reversed(data), "") if data else ""

    async def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished history entry, or None while the prompt is queued or running."""
        path = f"/history/{prompt_id}"
        data = await self.get_json(path)
        if not isinstance(data, dict):
            raise ComfyUIError(f"{path}: expected a JSON object, got {type(data).__name__}")
        if not data:
            return None  # {} while queued or running (and for an unknown id)
        entry = data.get(prompt_id)
        if not isinstance(entry, dict):
            raise ComfyUIError(f"{path}: answer has no entry for prompt {prompt_id}")
        return entry if isinstance(entry.get("status"), dict) else None

    async def submit(self, body: dict[str, Any], what: str = "prompt") -> str:
        """``POST /prompt``; the ``prompt_id`` ComfyUI answered. A 400 is ComfyUI's own error
        (:func:`describe_prompt_error`), prefixed ``"<what> rejected by ComfyUI"``."""
        status, raw = await self.request("POST", "/prompt", body)
        if status == 400:
            raise SubmitRejected(f"{what} rejected by ComfyUI: {describe_prompt_error(raw)}",
                                 prompt_error_type(raw))
        if status != 200:
            raise ComfyUIError(f"POST /prompt returned HTTP {status}{_snippet(raw)}", "http_status")
        data = parse_json(raw, "/prompt")
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise ComfyUIError("/prompt: answer has no string 'prompt_id'")
        return prompt_id

    async def interrupt(self, prompt_id: str | None = None) -> int:
        """``POST /interrupt``, for one running prompt or (None) whatever runs; the status."""
        status, _ = await self.request(
            "POST", "/interrupt", {} if prompt_id is None else {"prompt_id": prompt_id}
        )
        return status

    async def free(self, *, unload_models: bool = True, free_memory: bool = True) -> int:
        """``POST /free``: unload models and/or free cached memory; the status."""
        status, _ = await self.request(
            "POST", "/free", {"unload_models": unload_models, "free_memory": free_memory}
        )
        return status

    async def delete(self, prompt_ids: list[str]) -> int:
        """``POST /queue {"delete": [...]}``: take pending prompts off the queue; the status."""
        status, _ = await self.request("POST", "/queue", {"delete": prompt_ids})
        return status

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


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _mb(value: Any) -> float | None:
    amount = number(value)
    return None if amount is None else round(amount / MIB, 1)


def optional_str(value: Any) -> str | None:
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
    python = optional_str(system.get("python_version"))
    values: dict[str, Value] = {
        "online": True,
        "comfyui_version": optional_str(system.get("comfyui_version")),
        "python_version": python.split(" ", 1)[0] if python else None,
        "pytorch_version": optional_str(system.get("pytorch_version")),
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


@dataclass(frozen=True)
class QueuedPrompt:
    """One ``/queue`` item, complete enough to submit again: ``[number, prompt_id, prompt,
    extra_data, outputs_to_execute]``. ``extra_data`` may hold API-node secrets: it is kept
    for the journal's store only and never shown."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[Any]

    @property
    def client_id(self) -> str | None:
        value = self.extra_data.get("client_id")
        return value if isinstance(value, str) else None

    def to_json(self) -> str:
        return json.dumps([self.number, self.prompt_id, self.prompt, self.extra_data,
                           self.outputs], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> QueuedPrompt:
        return parse_item(json.loads(text), "journal")


@dataclass(frozen=True)
class QueueSnapshot:
    """``/queue`` in full: the running items and the pending ones sorted by number (ComfyUI
    answers them in heap order)."""

    running: tuple[QueuedPrompt, ...]
    pending: tuple[QueuedPrompt, ...]

    def ids(self) -> set[str]:
        return {p.prompt_id for p in (*self.running, *self.pending)}


def parse_item(item: Any, where: str) -> QueuedPrompt:
    if not (isinstance(item, list) and len(item) >= 5):
        raise ComfyUIError(f"{where}: an item is not a [number, prompt_id, prompt, "
                           "extra_data, outputs] array")
    number, prompt_id, prompt, extra, outputs = item[:5]
    if (isinstance(number, bool) or not isinstance(number, int | float)
            or not isinstance(prompt_id, str) or not prompt_id or not isinstance(prompt, dict)
            or not isinstance(extra, dict) or not isinstance(outputs, list)):
        raise ComfyUIError(f"{where}: an item has the wrong types")
    return QueuedPrompt(float(number), prompt_id, prompt, extra, outputs)


def parse_queue_snapshot(data: Any) -> QueueSnapshot:
    """The full ``/queue``; :class:`ComfyUIError` for any other shape."""
    if not isinstance(data, dict):
        raise ComfyUIError(f"/queue: expected a JSON object, got {type(data).__name__}")
    lists: list[tuple[QueuedPrompt, ...]] = []
    for key in ("queue_running", "queue_pending"):
        items = data.get(key)
        if not isinstance(items, list):
            raise ComfyUIError(f"/queue: '{key}' is missing or not a list")
        lists.append(tuple(parse_item(item, f"/queue {key}") for item in items))
    return QueueSnapshot(lists[0], tuple(sorted(lists[1], key=lambda p: p.number)))


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


def prompt_error_type(raw: bytes) -> str:
    """``error.type`` of a 400 answer to ``POST /prompt`` ('unknown' when it has none)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return "unknown"
    error = data.get("error") if isinstance(data, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else "unknown"


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
    return clip(text)
