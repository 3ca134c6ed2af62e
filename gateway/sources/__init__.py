"""Where variants come from besides the model folder: the MLflow Model Registry (README "Sources
and sinks"). Submodules are imported by name; nothing here imports MLflow, which is loaded only
when a `models:/` path is resolved."""
