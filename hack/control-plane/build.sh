#!/usr/bin/env bash
# Builds the real control plane the integration tests run against: kube-apiserver and etcd,
# plus the kube-proxy the simulated nodes run, from the pinned Go modules beside this script,
# with the machine's Go and the Go module proxy.
#
# Output: ${EGRESSGW_CACHE:-$HOME/.cache/egressgw}/control-plane/<k8s-version>-<etcd-version>/
#         {kube-apiserver,etcd,kube-proxy}. Nothing is written into the repository.
# Builds only the binaries that are missing; a no-op when all three are there. The test harness
# (tests/src/control_plane/) computes the same directory from the same go.mod files;
# EGRESSGW_CONTROL_PLANE_DIR overrides it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
APISERVER_MODULE="$HERE/kube-apiserver"
ETCD_MODULE="$HERE/etcd"
PROXY_MODULE="$HERE/kube-proxy"

# The version a go.mod requires for a module (first `require` match), e.g. v1.34.4.
required_version() { # <go.mod> <module path>
  awk -v m="$2" '($1 == "require" && $2 == m) { print $3; exit } ($1 == m && $2 ~ /^v/) { print $2; exit }' "$1"
}

K8S_VERSION="$(required_version "$APISERVER_MODULE/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(required_version "$ETCD_MODULE/go.mod" go.etcd.io/etcd/server/v3)"
PROXY_K8S_VERSION="$(required_version "$PROXY_MODULE/go.mod" k8s.io/kubernetes)"
[[ -n "$K8S_VERSION" && -n "$ETCD_VERSION" && -n "$PROXY_K8S_VERSION" ]] || { echo "build.sh: cannot read pinned versions from go.mod" >&2; exit 1; }
# kube-proxy shares the cache folder (keyed by the apiserver's version), so it must be the same
# Kubernetes release.
if [[ "$PROXY_K8S_VERSION" != "$K8S_VERSION" ]]; then
  echo "build.sh: $PROXY_MODULE/go.mod pins k8s.io/kubernetes $PROXY_K8S_VERSION, $APISERVER_MODULE/go.mod $K8S_VERSION; pin both to one release" >&2
  exit 1
fi

CACHE_ROOT="${EGRESSGW_CACHE:-$HOME/.cache/egressgw}"
OUT="${EGRESSGW_CONTROL_PLANE_DIR:-$CACHE_ROOT/control-plane/$K8S_VERSION-$ETCD_VERSION}"
APISERVER_BIN="$OUT/kube-apiserver"
ETCD_BIN="$OUT/etcd"
PROXY_BIN="$OUT/kube-proxy"

all_built() { [[ -x "$APISERVER_BIN" && -x "$ETCD_BIN" && -x "$PROXY_BIN" ]]; }

if all_built; then
  echo "control plane (kube-apiserver and kube-proxy $K8S_VERSION, etcd $ETCD_VERSION): cached in $OUT"
  exit 0
fi

# The machine's Go lives in /usr/local/go; a non-login shell may not have it on the PATH.
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build.sh: 'go' is not on the PATH; install Go to build the control plane" >&2; exit 1; }
mkdir -p "$OUT"

# One builder at a time (make test in two shells, or two sessions on one machine).
exec 9>"$OUT/.build.lock"
flock 9
if all_built; then
  echo "control plane: built by another process in $OUT"
  exit 0
fi

# Static binaries, paths stripped, VCS stamping off (the module cache has no VCS anyway).
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false -mod=readonly"
# The pinned go.mod files name the toolchain they need; never download another one.
export GOTOOLCHAIN=local

# "v1.34.4" -> major "1", minor "34"
K8S_SEMVER="${K8S_VERSION#v}"
K8S_MAJOR="${K8S_SEMVER%%.*}"
K8S_MINOR="${K8S_SEMVER#*.}"; K8S_MINOR="${K8S_MINOR%%.*}"
VERSION_PKG=k8s.io/component-base/version
K8S_LDFLAGS="-s -w \
 -X $VERSION_PKG.gitVersion=$K8S_VERSION \
 -X $VERSION_PKG.gitMajor=$K8S_MAJOR \
 -X $VERSION_PKG.gitMinor=$K8S_MINOR \
 -X $VERSION_PKG.gitTreeState=clean"

# Build to a temporary name and rename, so an interrupted build never looks cached.
build() { # <module dir> <package> <output> <ldflags>
  local tmp="$3.tmp.$$"
  echo "building $2 -> $3"
  (cd "$1" && go build -trimpath -ldflags "$4" -o "$tmp" "$2")
  mv -f "$tmp" "$3"
}

if [[ ! -x "$ETCD_BIN" ]]; then
  build "$ETCD_MODULE" go.etcd.io/etcd/server/v3 "$ETCD_BIN" "-s -w"
fi
if [[ ! -x "$APISERVER_BIN" ]]; then
  build "$APISERVER_MODULE" k8s.io/kubernetes/cmd/kube-apiserver "$APISERVER_BIN" "$K8S_LDFLAGS"
fi
if [[ ! -x "$PROXY_BIN" ]]; then
  build "$PROXY_MODULE" k8s.io/kubernetes/cmd/kube-proxy "$PROXY_BIN" "$K8S_LDFLAGS"
fi

"$APISERVER_BIN" --version
"$PROXY_BIN" --version
"$ETCD_BIN" --version | head -1
echo "control plane (kube-apiserver and kube-proxy $K8S_VERSION, etcd $ETCD_VERSION): built in $OUT"
