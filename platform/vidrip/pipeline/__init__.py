"""The whole product as one Ray job: raw teaching videos to an evaluated, served model.

- :mod:`vidrip.pipeline.config`: the job's typed config (``jobs/configs/pipeline_tiny.yaml``);
- :mod:`vidrip.pipeline.steps`: each step's job config and run (sample, detector, curate, train, sweep,
  merge, serve, eval);
- :mod:`vidrip.pipeline.run`: keys, skips, resumes and tracks the steps under one MLflow run.

Research use only, not for clinical decisions.
"""
