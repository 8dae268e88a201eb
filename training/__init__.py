"""Training: schedules, templates, datasets, the loop, checkpoints and the worker job.

Kept import-free on purpose: importing `training` must not pull in torch or diffusers.
"""
