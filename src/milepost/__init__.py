"""milepost: resumable, verifiable data migrations.

The Python API mirrors the pipeline file:

    import milepost
    pipeline = milepost.Pipeline.model_validate({...})   # or milepost.load_pipeline("p.yml")
    milepost.run(pipeline)
"""

from milepost.config import Pipeline, StreamConfig, build_pipeline, load_pipeline
from milepost.errors import MilepostError
from milepost.runner import Runner, RunResult, run

__all__ = [
    "MilepostError",
    "Pipeline",
    "RunResult",
    "Runner",
    "StreamConfig",
    "build_pipeline",
    "load_pipeline",
    "run",
]
__version__ = "0.1.0"
