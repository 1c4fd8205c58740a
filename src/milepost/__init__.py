"""milepost: resumable, verifiable data migrations.

The Python API mirrors the pipeline file:

    import milepost
    pipeline = milepost.Pipeline.model_validate({...})   # or milepost.load_pipeline("p.yml")
    milepost.run(pipeline)
    report = milepost.verify(pipeline)                      # report.equal, report.differences

and `@milepost.source(columns=..., key=...)` makes a generator a stream (docs/sources/python.md).
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from milepost.config import Pipeline, StreamConfig, build_pipeline, load_pipeline
    from milepost.errors import MilepostError
    from milepost.python_source import PythonSource, source
    from milepost.repair import repair
    from milepost.runner import Runner, RunResult, run
    from milepost.verify import Report, verify

# Where each public name is defined. Each is imported on first use (PEP 562): every `milepost`
# command imports this package first, and importing it all eagerly cost ~0.4 s of start-up
# (SQLAlchemy, sqlglot, pydantic models, ...) even for `milepost --help`. Now a command loads
# only the modules it uses.
_PUBLIC = {
    "MilepostError": "milepost.errors",
    "Pipeline": "milepost.config",
    "PythonSource": "milepost.python_source",
    "Report": "milepost.verify",
    "RunResult": "milepost.runner",
    "Runner": "milepost.runner",
    "StreamConfig": "milepost.config",
    "build_pipeline": "milepost.config",
    "load_pipeline": "milepost.config",
    "repair": "milepost.repair",
    "run": "milepost.runner",
    "source": "milepost.python_source",
    "verify": "milepost.verify",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'milepost' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(types.ModuleType):
    """`milepost.verify` and `milepost.repair` are API functions and also submodule names, and
    importing a submodule sets the package attribute of that name to the module. Eager imports
    used to overwrite it with the function again; lazily, this keeps a public name from being
    replaced by a module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "MilepostError",
    "Pipeline",
    "PythonSource",
    "Report",
    "RunResult",
    "Runner",
    "StreamConfig",
    "build_pipeline",
    "load_pipeline",
    "repair",
    "run",
    "source",
    "verify",
]
__version__ = "0.1.0"
