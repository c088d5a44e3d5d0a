#!/usr/bin/env bash
# Judge the install manifests and the Dockerfile with checkov (PyPI), an independent scanner.
# Every check the design must fail (the agent's host network, NET_RAW, uid 0, ...) is skipped
# inline in the manifest with its reason; anything else failing fails this script.
#
# checkov is installed once into a venv under ${EGRESSGW_CACHE:-$HOME/.cache/egressgw}.
# Set CHECKOV_VERSION to change the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
CACHE="${EGRESSGW_CACHE:-$HOME/.cache/egressgw}"
VENV="$CACHE/checkov-venv"
KUBECTL="${KUBECTL:-kubectl}"

if [ ! -x "$VENV/bin/checkov" ] || [ "$("$VENV/bin/pip" show checkov 2>/dev/null | sed -n 's/^Version: //p')" != "$CHECKOV_VERSION" ]; then
  echo "checkov: installing $CHECKOV_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "checkov==$CHECKOV_VERSION"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# checkov reads plain manifests: render the kustomizations as kubectl would apply them.
"$KUBECTL" kustomize deploy/ > "$work/install.yaml"
"$KUBECTL" kustomize deploy/cleanup/ > "$work/cleanup.yaml"
cp Dockerfile "$work/Dockerfile"

"$VENV/bin/checkov" --quiet --compact --skip-download --directory "$work" \
  --framework kubernetes dockerfile
echo "checkov: no failed check (rendered deploy/, deploy/cleanup/ and the Dockerfile)"
