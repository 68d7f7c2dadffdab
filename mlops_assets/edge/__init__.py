"""Edge inference: a governed registry version as a self-contained artifact that runs without the platform.

`export` compiles the version's LightGBM booster to a C library and writes it with a manifest and a
standalone runner (`predict.py`, standard library only); `runner` is that runner; `compile` the build.
"""
