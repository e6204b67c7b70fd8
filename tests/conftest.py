import os
import sys
from pathlib import Path

from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The team's machines and CI keep the prepared files in ../shared/datasets: a pre-built cache that saves downloading
# their source packages on every run. Elsewhere (a bare clone) nothing is set: prunekit builds each named dataset
# into the user cache on first use, as it does for a user, and a test that cannot get its data fails.
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if _SHARED.is_dir():
    os.environ.setdefault("PRUNEKIT_DATA_DIR", str(_SHARED))

# Property tests draw the same examples on every run, so a landing never fails by chance (a failure found by
# exploring locally with HYPOTHESIS_PROFILE=explore is pinned with @example).
settings.register_profile("default", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
