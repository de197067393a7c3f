#!/usr/bin/env bash
# The main job: a multi-host overlay demo in network namespaces, on the embedded defaults.
# Builds the agent, brings up a 3-host lab, shows what it does, removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo xtask demo "$@"
