"""The distillation engine: models, data, methods, trainer, evaluation, timing.

A library that knows torch and nothing else: no gRPC, no database, no files
beyond the paths it is handed. The service drives it through plain function
calls and a progress callback.
"""
