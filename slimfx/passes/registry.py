"""The registry of passes and named pipelines, shared by built-in and user passes.

``@register_pass`` on a frozen-dataclass :class:`~slimfx.passes.base.Pass` makes it
available by name to pipeline strings and the CLI. Built-in passes register when
their module is imported; the first lookup of a name not yet registered imports
every pass module of the ``slimfx.passes`` package (and its subpackages), so
``import slimfx`` stays fast and new pass modules need no central list.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, overload

from slimfx.errors import PipelineError
from slimfx.passes.base import Pass, is_kebab

__all__ = [
    "register_pass",
    "register_pipeline",
    "get_pass",
    "get_pipeline",
    "known_passes",
    "known_pipelines",
    "NamedPipeline",
]

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=type[Pass])

_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, NamedPipeline] = {}
_LOADED = False
_LOAD_ERRORS: dict[str, str] = {}

# Infrastructure modules of the package: they define no passes.
_INFRA = frozenset({"base", "pipeline", "registry", "context", "instruments", "analysis",
                    "rewriter", "patterns"})


@dataclass(frozen=True)
class NamedPipeline:
    """A registered pipeline: a name for a pipeline string."""

    name: str
    text: str
    doc: str = ""


@overload
def register_pass(cls: P, *, name: str | None = None, aliases: tuple[str, ...] = (),
                  override: bool = False) -> P: ...


@overload
def register_pass(cls: None = None, *, name: str | None = None, aliases: tuple[str, ...] = (),
                  override: bool = False) -> Callable[[P], P]: ...


def register_pass(cls: P | None = None, *, name: str | None = None,
                  aliases: tuple[str, ...] = (), override: bool = False) -> P | Callable[[P], P]:
    """Class decorator registering a pass under its ``name`` (and aliases).

    Usable bare (``@register_pass``) or with arguments
    (``@register_pass(aliases=("fuse-conv-relu",))``).

    Args:
        cls: the pass class (a frozen dataclass subclass of ``Pass``) when used bare.
        name: register under this name instead of the class's ``name``.
        aliases: more names for the same pass (``fuse-conv-relu`` for ``fuse-activation``).
        override: replace a pass already registered under the name.

    Returns:
        The class itself (bare use), or the decorator.

    Raises:
        PipelineError: the class is not a frozen dataclass Pass, the name is not
            kebab-case, or the name is taken (unless ``override``).
    """

    def deco(c: P) -> P:
        if not (isinstance(c, type) and issubclass(c, Pass)):
            raise PipelineError(f"register_pass: {c!r} is not a subclass of slimfx Pass")
        params = getattr(c, "__dataclass_params__", None)
        own_fields = "__dataclass_params__" in c.__dict__
        if params is None or not params.frozen or (not own_fields and inspect.get_annotations(c)):
            raise PipelineError(f"register_pass: {c.__name__} must be decorated with "
                                "@dataclass(frozen=True) (below @register_pass)")
        if name is not None:
            c.name = name
        if not isinstance(c.name, str) or not is_kebab(c.name):
            raise PipelineError(f"register_pass: {c.__name__}.name = {c.name!r} is not a "
                                "kebab-case name such as 'fold-bn'")
        bad = [a for a in aliases if not isinstance(a, str) or not is_kebab(a)]
        if isinstance(aliases, str) or bad:
            raise PipelineError(f"register_pass: aliases of {c.__name__} must be a tuple of "
                                f"kebab-case names, got {aliases!r}")
        c.option_specs()  # checks the option types now rather than at first use
        for n in (c.name, *aliases):
            _add(n, c, override)
        return c

    return deco(cls) if cls is not None else deco


def _add(name: str, cls: type[Pass], override: bool) -> None:
    old = _PASSES.get(name)
    if old is not None and old is not cls and not override and not _same_class(old, cls):
        raise PipelineError(f"a pass named {name!r} is already registered "
                            f"({old.__module__}.{old.__qualname__}); pass override=True")
    if name in _PIPELINES:
        raise PipelineError(f"{name!r} is already the name of a pipeline")
    _PASSES[name] = cls


def _same_class(a: type, b: type) -> bool:
    # A module imported twice (e.g. reloaded in a test) re-registers the same class.
    return a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__


def register_pipeline(name: str, text: str, doc: str = "", *, override: bool = False) -> None:
    """Registers a named pipeline, expanded wherever its name appears in a pipeline string.

    Args:
        name: kebab-case name, e.g. ``cleanup``.
        text: the pipeline string it stands for.
        doc: one line of documentation (shown by ``Pipeline.describe()``).
    """
    if not isinstance(name, str) or not is_kebab(name):
        raise PipelineError(f"register_pipeline: {name!r} is not a kebab-case name")
    if not isinstance(text, str):
        raise PipelineError(f"register_pipeline: the text of {name!r} must be a pipeline "
                            f"string, not {type(text).__name__}")
    if name in _PASSES:
        raise PipelineError(f"register_pipeline: {name!r} is already the name of a pass")
    if name in _PIPELINES and not override and _PIPELINES[name].text != text:
        raise PipelineError(f"a pipeline named {name!r} is already registered; pass override=True")
    _PIPELINES[name] = NamedPipeline(name, text, doc)


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import slimfx.passes as pkg

    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        short = info.name.rsplit(".", 1)[-1]
        if short in _INFRA or short.startswith("_"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as e:  # a broken pass module must not hide the others
            _LOAD_ERRORS[info.name] = f"{type(e).__name__}: {e}"
            logger.warning("slimfx: could not import pass module %s: %s", info.name, e)


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under ``name``.

    Raises:
        PipelineError: unknown name; the message lists the known passes and a close match.
    """
    if not isinstance(name, str):
        raise PipelineError(f"a pass name is a str, not {type(name).__name__} ({name!r})")
    cls = _PASSES.get(name)
    if cls is None:
        _load_builtin()
        cls = _PASSES.get(name)
    if cls is None:
        raise PipelineError(unknown_name_message(name))
    return cls


def get_pipeline(name: str) -> NamedPipeline | None:
    """The named pipeline registered under ``name``, or None."""
    if name not in _PIPELINES and name not in _PASSES:
        _load_builtin()
    return _PIPELINES.get(name)


def unknown_name_message(name: str) -> str:
    """The error text for an unknown pass or pipeline name."""
    _load_builtin()
    known = sorted(_PASSES) + sorted(_PIPELINES)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    msg = (f"unknown pass {name!r}{hint}\n  known passes: {', '.join(sorted(_PASSES))}\n"
           f"  known pipelines: {', '.join(sorted(_PIPELINES))}\n"
           "  register your own with @slimfx.register_pass")
    if _LOAD_ERRORS:
        msg += "\n  pass modules that failed to import: " + "; ".join(
            f"{m} ({e})" for m, e in sorted(_LOAD_ERRORS.items()))
    return msg


def known_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name (aliases included)."""
    _load_builtin()
    return dict(sorted(_PASSES.items()))


def known_pipelines() -> dict[str, NamedPipeline]:
    """Every registered named pipeline."""
    _load_builtin()
    return dict(sorted(_PIPELINES.items()))


register_pipeline("cleanup", "remove-identity,fold-constants,dce",
                  "remove identities, fold constant subgraphs, drop dead nodes and constants")
