#!/usr/bin/env bash
# Build the folder `.gpu/` that the device call of bench/gpu_check.sh carries (run here, in the
# repo root, with the project's Python environment active; needs network for pip once):
#   .gpu/whl/*.whl                 the packages of bench/gpu_wheels.txt for CPython 3.12 x86-64
#   .gpu/smollm2-135m-10l.gguf     the embedded model's first 10 decoder blocks (bench/trim_gguf.py)
# and ignore it in git (.git/info/exclude), then print the size of everything the call carries.
# The whole call must stay under 64 MiB: repo (tracked + untracked-not-ignored files) + .gpu/.
#
#   bash bench/gpu_carry.sh            # then the `run` call in bench/gpu_check.sh's header
set -euo pipefail
cd "$(dirname "$0")/.."
BLOCKS=${GPU_MODEL_BLOCKS:-10}
exclude=$(git rev-parse --git-path info/exclude)  # also right in a worktree, where .git is a file
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
mkdir -p .gpu/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl \
  -r <(grep -v '^#' bench/gpu_wheels.txt | grep -v '^\s*$')
# one version of each package (a leftover second version stops the install there)
dupes=$(ls .gpu/whl | sed -E 's/-[0-9][^-]*-.*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dupes" ] || { echo "two versions of: $dupes (delete the stale wheel in .gpu/whl)" >&2; exit 1; }
model=.gpu/smollm2-135m-${BLOCKS}l.gguf
[ -f "$model" ] || python3 bench/trim_gguf.py --blocks "$BLOCKS" --out "$model"
ls -la .gpu .gpu/whl
tree_kib=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -kc 2>/dev/null | awk '$2=="total"{s+=$1} END{print s+0}')
carry_kib=$(du -sk .gpu | cut -f1)
echo "working tree that travels: $((tree_kib / 1024)) MiB; .gpu: $((carry_kib / 1024)) MiB; total $(((tree_kib + carry_kib) / 1024)) MiB (limit 64)"
[ $((tree_kib + carry_kib)) -lt $((63 * 1024)) ] || { echo "over the limit: lower GPU_MODEL_BLOCKS" >&2; exit 1; }
