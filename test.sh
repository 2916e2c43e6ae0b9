#!/usr/bin/env bash
# The whole suite: unit (no root), netns and e2e (root, real kernel).
set -euo pipefail
cd "$(dirname "$0")"
exec python3 -m pytest -q -p no:cacheprovider "$@"
