"""milepost: resumable, verifiable data migrations.

The Python API mirrors the pipeline file:

    import milepost
    pipeline = milepost.Pipeline.model_validate({...})   # or milepost.load_pipeline("p.yml")
    milepost.run(pipeline)
    report = milepost.verify(pipeline)                      # report.equal, report.differences
"""

from milepost.config import Pipeline, StreamConfig, build_pipeline, load_pipeline
from milepost.errors import MilepostError
from milepost.repair import repair
from milepost.runner import Runner, RunResult, run
from milepost.verify import Report, verify

__all__ = [
    "MilepostError",
    "Pipeline",
    "Report",
    "RunResult",
    "Runner",
    "StreamConfig",
    "build_pipeline",
    "load_pipeline",
    "repair",
    "run",
    "verify",
]
__version__ = "0.1.0"
