"""Named models and datasets, obtainable offline from registry packages or a data directory."""

from prunekit.catalog.models import MODELS, load_model, models_table, resolve_model

__all__ = ["MODELS", "load_model", "models_table", "resolve_model"]
