"""prunekit: sparsify and prune pre-trained transformer language models, with measured gains."""

__version__ = "0.1.0"


def load(run_dir, **kwargs):
    """Load a run directory's model with its pruned per-layer shapes (see `prunekit.runs.io.load`)."""
    from prunekit.runs.io import load as _load

    return _load(run_dir, **kwargs)


def save(model, out_dir, tokenizer=None, **kwargs):
    """Save a model as a run directory with its manifest (see `prunekit.runs.io.save`)."""
    from prunekit.runs.io import save as _save

    return _save(model, out_dir, tokenizer, **kwargs)
