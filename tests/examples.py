"""Where the tests find flannel's own extension examples (vendored verbatim, see README there)."""
from pathlib import Path

FLANNEL_EXAMPLES = Path(__file__).resolve().parent / "flannel-examples"
