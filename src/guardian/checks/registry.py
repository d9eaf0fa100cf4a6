"""THE one table of check kinds: what each kind is, validates by, builds and declares.

Everything that used to re-know a kind by its name (the config union, the factory table,
"a service check acts at once", "host checks have no startup phase", the incident
snapshot's sections, the API's and the metrics' readings) asks this table instead. A new
kind is one new module (its config model, ``create`` and ``READINGS``) plus one line in
:data:`KINDS`; ``docs/adding-a-check.md`` is the recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from guardian.checks import disk, gpu, memory, service
from guardian.checks.base import Check, CheckConfigBase, CheckContext
from guardian.checks.comfyui import canary
from guardian.checks.comfyui import health as comfyui
from guardian.checks.http import check as http
from guardian.core.result import Condition, Reading

Factory = Callable[[Any, CheckContext], Check]


@dataclass(frozen=True, slots=True)
class KindSpec:
    """One check kind and the facts about it that other rooms act on.

    ``service_state``: the kind reports the target's own service (its state and pid), so
    it needs ``[targets.service]``, one failure is enough to act (it is never a guess) and
    it counts towards recovery even with ``liveness = false``.
    ``startup_phase``: the kind judges the service's answers, so while the service boots
    its failures say nothing yet; host kinds (disk, memory, gpu) and the service state do
    not wait for a boot.
    ``conditions``: the named conditions a result of this kind may carry; the remediation
    ladder owns them (recovery feeds no liveness streak with them).
    ``host``: the kind observes the machine Guardian runs on, not a target: its readings
    are the host's (one metric series per item, the first result wins) and it has no
    startup phase.
    ``health``: the ``/api/health`` section its readings fill, by name (``system``'s
    ``disks``, ``memory``, ``gpus``, or ``comfyui``: the first such result).
    ``snapshot``: the incident snapshot's section title for this kind's latest result.
    ``signature``: the report's failure signature a failure of this kind proves by itself.
    ``readings``: what its results measure, declared once for the API and the metrics.
    """

    kind: str
    config: type[CheckConfigBase]
    factory: Factory
    readings: tuple[Reading, ...] = ()
    service_state: bool = False
    startup_phase: bool = True
    host: bool = False
    health: Literal["disks", "memory", "gpus", "comfyui"] | None = None
    conditions: frozenset[Condition] = frozenset()
    snapshot: str | None = None
    signature: str | None = None


KINDS: tuple[KindSpec, ...] = (
    KindSpec("http", http.HttpCheckConfig, http.create, http.READINGS),
    KindSpec("comfyui", comfyui.ComfyUICheckConfig, comfyui.create, comfyui.READINGS,
             health="comfyui", snapshot="ComfyUI", conditions=frozenset(Condition)),
    KindSpec("comfyui_canary", canary.ComfyUICanaryConfig, canary.create, snapshot="ComfyUI"),
    KindSpec("disk", disk.DiskCheckConfig, disk.create, disk.READINGS, startup_phase=False,
             host=True, health="disks", signature="Disk critically full"),
    KindSpec("memory", memory.MemoryCheckConfig, memory.create, memory.READINGS,
             startup_phase=False, host=True, health="memory"),
    KindSpec("gpu", gpu.GpuCheckConfig, gpu.create, gpu.READINGS, startup_phase=False,
             host=True, health="gpus", snapshot="GPU"),
    KindSpec("service", service.ServiceCheckConfig, service.create, service.READINGS,
             service_state=True, startup_phase=False),
)

_UNKNOWN = KindSpec("", CheckConfigBase, lambda cfg, ctx: _unknown(cfg))


def _unknown(cfg: CheckConfigBase) -> Check:
    raise KeyError(f"no check kind {cfg.kind!r} is registered")


class Registry:
    """The kinds in their documented order, with listeners for a kind added at run time.

    Adding at run time exists for tests and plug-ins: the config schema listens and
    rebuilds its union, so a registered kind validates at once.
    """

    def __init__(self, specs: tuple[KindSpec, ...]) -> None:
        self._specs = {s.kind: s for s in specs}
        self._listeners: list[Callable[[], None]] = []

    def __iter__(self) -> Iterator[KindSpec]:
        return iter(list(self._specs.values()))

    def __contains__(self, kind: object) -> bool:
        return kind in self._specs

    def kinds(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def get(self, kind: str) -> KindSpec:
        """The spec of ``kind``; an unknown kind (a stored result of a removed kind, a
        test's made-up one) gets the defaults: no traits, no readings."""
        return self._specs.get(kind, _UNKNOWN)

    def build(self, cfg: CheckConfigBase, ctx: CheckContext) -> Check:
        """Instantiate the runtime check for a validated config."""
        return self._specs[cfg.kind].factory(cfg, ctx)

    def register(self, spec: KindSpec) -> None:
        if spec.kind in self._specs:
            raise ValueError(f"check kind {spec.kind!r} is already registered")
        self._specs[spec.kind] = spec
        self._changed()

    def unregister(self, kind: str) -> None:
        if self._specs.pop(kind, None) is not None:
            self._changed()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()


REGISTRY = Registry(KINDS)


def spec(kind: str) -> KindSpec:
    """Shorthand for ``REGISTRY.get(kind)``."""
    return REGISTRY.get(kind)


def build_check(cfg: CheckConfigBase, ctx: CheckContext) -> Check:
    """Instantiate the runtime check for a validated config (by its kind's factory)."""
    return REGISTRY.build(cfg, ctx)
