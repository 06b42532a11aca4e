"""Sweeps: stage-3 LoRA hyperparameters on Ray Tune, each trial a real Ray Train run, tracked in MLflow."""
