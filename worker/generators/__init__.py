"""Generators turn a request into a document; ``get_generator`` picks one by name.

The generators themselves live in their own modules and are imported only
when chosen, so a worker that runs ``offline`` never loads an SDK it does not
use. Resolving ``auto`` to a name is the settings' job, not this module's.
"""

from __future__ import annotations

import importlib
from typing import Any

from shared.errors import ConfigurationError
from worker.generators.base import Generator

# name -> "module:Class"; adding a generator is one line here.
_GENERATORS: dict[str, str] = {
    "anthropic": "worker.generators.anthropic:AnthropicGenerator",
    "offline": "worker.generators.offline:OfflineGenerator",
    "echo": "worker.generators.echo:EchoGenerator",
}
GENERATOR_NAMES = tuple(_GENERATORS)


def get_generator(name: str, **kwargs: Any) -> Generator:
    """A new generator called ``name``, built with ``kwargs``.

    Raises:
        ConfigurationError: no generator has that name.
    """
    target = _GENERATORS.get(name)
    if target is None:
        choices = ", ".join(GENERATOR_NAMES)
        raise ConfigurationError(
            f"ARTIFACTD_GENERATOR: unknown generator {name!r} (choose from {choices})"
        )
    module_name, class_name = target.split(":")
    generator_class = getattr(importlib.import_module(module_name), class_name)
    generator: Generator = generator_class(**kwargs)
    return generator
