"""Streaming inference: request events from a folder of JSON-lines files, scored by the online service's
own `Service` object, written to an atomic part-file sink exactly once per event across restarts."""
