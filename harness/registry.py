"""The method registry: built-in methods and those of third-party packages.

A method is registered under a name, either eagerly (`@register_method("name")`) or lazily
as a `"module:attr"` target. Built-ins come from the table below; third-party packages add
theirs through the entry-point group `harness.methods` (see README, "Adding a method").
"""
from __future__ import annotations

import difflib
import importlib
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, Generic, Mapping, TypeVar

from harness.errors import HarnessError, UnknownMethodError

if TYPE_CHECKING:
    from harness.quantizer import MethodConfig, Quantizer

T = TypeVar("T")
logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "harness.methods"

#: Built-in methods: name -> "module:attr". Kept in sync with pyproject's entry points so the
#: source tree works even when the distribution is not installed.
BUILTIN_METHODS: dict[str, str] = {
    "none": "methods.none:NoQuantizer",
    "rtn": "methods.rtn:RTNQuantizer",
    "aqlm": "methods.aqlm:AQLMQuantizer",
    "gptq": "methods.gptq:GPTQQuantizer",
    "crvq": "methods.crvq:CRVQQuantizer",
}


class Registry(Generic[T]):
    """A name -> object registry accepting objects or lazy `"module:attr"` targets.

    On first use it registers `builtins` (name -> "module:attr") and then the entry points of
    `group` (third-party packages; an entry point equal to a built-in is skipped). An entry point
    that takes a built-in's name with another target raises `clash_error` when one is given, else
    it replaces the built-in, with a logged warning."""

    def __init__(
        self, kind: str, group: str = ENTRY_POINT_GROUP, error: type[HarnessError] = UnknownMethodError,
        builtins: Mapping[str, str] | None = None, clash_error: type[HarnessError] | None = None,
    ):
        self.kind = kind
        self.group = group  # the entry-point group third-party packages register under
        self.error = error  # raised for an unknown or unimportable name
        self.clash_error = clash_error  # raised for an entry point named like a built-in (None: it replaces it)
        self.builtins = dict(builtins or {})
        self._items: dict[str, T | str] = {}
        self._discovered = False

    def discover(self) -> None:
        """Register the built-ins and the entry points of `group` (once)."""
        if self._discovered:
            return
        items: dict[str, T | str] = dict(self.builtins)
        for ep in entry_points(group=self.group):
            builtin = self.builtins.get(ep.name)
            if builtin == ep.value:
                continue
            if builtin is not None:
                dist = getattr(getattr(ep, "dist", None), "name", None)
                clash = (
                    f"the entry point '{ep.name} = {ep.value}' (group '{self.group}'"
                    f"{f', package {dist!r}' if dist else ''}) has the name of the built-in {self.kind} "
                    f"'{ep.name}' ({builtin})"
                )
                if self.clash_error is not None:
                    raise self.clash_error(
                        f"{clash}. Rename the entry point in that package, or uninstall it."
                    )
                logger.warning("%s: it replaces the built-in; rename the entry point to keep both.", clash)
            items[ep.name] = ep.value
        self._items.update(items)
        self._discovered = True

    def register(self, name: str, target: T | str | None = None) -> Callable[[T], T] | T | str:
        """Register `target` under `name`; without a target, return a class decorator."""
        self.discover()
        if target is None:
            def decorator(obj: T) -> T:
                self._items[name] = obj
                return obj
            return decorator
        self._items[name] = target
        return target

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise self.error(
                f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(self.names()) or 'none'}. "
                f"Run `harness list` to see them, or install the package that provides it "
                f"(entry-point group '{self.group}')."
            )
        item = self._items[name]
        if isinstance(item, str):
            module_name, _, attr = item.partition(":")
            try:
                item = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise self.error(
                    f"{self.kind} '{name}' is registered as '{self._items[name]}' but cannot be "
                    f"imported: {exc}. Reinstall the package that provides it."
                ) from exc
            self._items[name] = item
        return item


METHODS: Registry = Registry("method", builtins=BUILTIN_METHODS)


def register_method(name: str):
    """Class decorator registering a `Quantizer` subclass under `name` (in-process)."""
    return METHODS.register(name)


def get_method(name: str):
    """The `Quantizer` subclass registered under `name`."""
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()


class BudgetError(HarnessError):
    """A method has no preset for a nominal bit budget."""


def method_config(
    method: "str | type[Quantizer]", budget: int | None = None, params: Mapping[str, Any] | None = None
) -> "MethodConfig":
    """The validated config of `method` (a registry name or a `Quantizer` class): its preset for
    the nominal `budget` (none: the config's defaults) overridden by `params`.

    Raises UnknownMethodError (unknown name), BudgetError (no preset for `budget`, naming the
    supported budgets) or pydantic's ValidationError (bad `params`)."""
    cls = get_method(method) if isinstance(method, str) else method
    base: dict[str, Any] = {}
    if budget is not None:
        try:
            base = dict(cls.presets(budget))
        except ValueError as exc:
            supported = ", ".join(map(str, cls.supported_budgets())) or "none"
            raise BudgetError(f"{exc}. Supported budgets for '{cls.name}': {supported}.") from exc
    return cls.Config.model_validate({**base, **(params or {})})


def build_quantizer(
    method: "str | type[Quantizer]", budget: int | None = None, params: Mapping[str, Any] | None = None
) -> "Quantizer":
    """The one way to build a quantizer from (name, budget, params): see `method_config`."""
    cls = get_method(method) if isinstance(method, str) else method
    return cls(method_config(cls, budget, params))


def default_label(method: "str | type[Quantizer]", params: Mapping[str, Any] | None = None) -> str:
    """The method label of cells with these `params` and no `label` of their own: the method's
    `Quantizer.default_label` of its config (e.g. `aqlm-harness`; the registry name for the
    published algorithm). Raises as `method_config` does."""
    cls = get_method(method) if isinstance(method, str) else method
    return cls.default_label(method_config(cls, params=params))
