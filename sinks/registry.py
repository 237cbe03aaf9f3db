"""Sink name -> its class, imported on demand (vendor SDKs are optional extras)."""

from __future__ import annotations

import importlib

from sinks.base import Capabilities, Sink
from sinks.settings import Settings, sink_names


def sink_class(name: str) -> type[Sink]:
    if name not in sink_names():
        raise ValueError(f"unknown sink {name!r}; choose from {', '.join(sink_names())}")
    module = importlib.import_module(f"sinks.{name}")
    cls = module.SINK
    if not (isinstance(cls, type) and issubclass(cls, Sink) and cls.name == name):
        raise TypeError(f"sinks.{name}.SINK is not the {name} sink")
    return cls


def build_sink(settings: Settings, name: str) -> Sink:
    return sink_class(name)(settings)


def capabilities(settings: Settings, name: str) -> Capabilities:
    """What destination ``name`` accepts, without connecting to it."""
    return sink_class(name).declare_capabilities(settings)
