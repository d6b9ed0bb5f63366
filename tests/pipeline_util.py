"""Helpers for the backend tests that run the real pipeline for one partition."""
from __future__ import annotations

from typing import Callable, Optional

from resources.generator import GeneratorResource

# In-process hooks for HookedGenerator (the resource object is rebuilt per run, module state is not).
HOOKS: dict[str, Optional[Callable]] = {"on_get": None, "on_generate": None}
CALLS = {"get": 0, "generate": 0}


def reset_hooks(on_get: Optional[Callable] = None, on_generate: Optional[Callable] = None) -> None:
    HOOKS.update(on_get=on_get, on_generate=on_generate)
    CALLS.update(get=0, generate=0)


class _Wrapped:
    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def generate(self, jobs):
        CALLS["generate"] += 1
        if HOOKS["on_generate"]:
            HOOKS["on_generate"](CALLS["generate"])
        return self._inner.generate(jobs)


class HookedGenerator(GeneratorResource):
    """The template generator with test hooks: `get` is called once per step attempt, `generate` per batch."""

    def get(self):
        CALLS["get"] += 1
        if HOOKS["on_get"]:
            HOOKS["on_get"](CALLS["get"])
        return _Wrapped(super().get())


def add_partitions(instance, merchant: str, category: str) -> None:
    instance.add_dynamic_partitions("merchant", [merchant])
    instance.add_dynamic_partitions("category", [category])


def materialize_partition(resources: dict, merchant: str, category: str, instance=None, raise_on_error: bool = False):
    from dagster import DagsterInstance, materialize

    from bggen_assets.assets.pipeline import pipeline_assets
    from bggen_assets.partitions import partition_key

    instance = instance or DagsterInstance.ephemeral()
    add_partitions(instance, merchant, category)
    return materialize(pipeline_assets, partition_key=partition_key(merchant, category), resources=resources,
                       instance=instance, raise_on_error=raise_on_error)


def step_events(result, step_key: str, kind: str) -> list:
    return [e for e in result.all_events if e.step_key == step_key and e.event_type_value == kind]
