#!/usr/bin/env bash
# Snakemake runs this inside the new environment (workflow/envs/disttgl.yaml), in its working
# directory: the repository root when the workflow is run as README.md says (from the checkout).
# The install is README.md's: torch pinned first (a CPU wheel; on a GPU machine install the CUDA
# build you want instead), then disttgl itself, editable, so the rules run the checkout's code.
set -euo pipefail
test -f pyproject.toml && grep -q '^name = "disttgl"' pyproject.toml || {
    echo "disttgl.post-deploy.sh: run snakemake --sdm conda from the disttgl checkout (no pyproject.toml of disttgl in $PWD)" >&2
    exit 1
}
python -m pip install torch==2.13.0
python -m pip install -e ".[tma]"  # the tma rule needs torchft and pymetis
