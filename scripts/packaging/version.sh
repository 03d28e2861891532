#!/usr/bin/env bash
# Prints the package version from git, valid for both dpkg and rpm and
# increasing with every commit: a release tag vX.Y.Z gives X.Y.Z; N commits
# after it give X.Y.Z+gitN.gHASH; with no tag, 0.0.0+gitN.gHASH counts all
# commits. Uncommitted changes add .dirty.
set -euo pipefail
cd "$(dirname "$0")/../.."
if desc=$(git describe --tags --match 'v[0-9]*' --long 2>/dev/null); then
  # vX.Y.Z-N-gHASH
  base=${desc%-*-g*}; rest=${desc#"$base"-}
  n=${rest%%-*}; hash=${rest#*-}
  base=${base#v}
  if [[ $n == 0 ]]; then v=$base; else v="$base+git$n.$hash"; fi
else
  v="0.0.0+git$(git rev-list --count HEAD).g$(git rev-parse --short HEAD)"
fi
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  v="$v.dirty"
fi
echo "$v"
