# egressgw — the two commands a newcomer needs:
#   make test   every test, on a fresh machine, as root (installs packages, builds the control plane)
#   make demo   the main job on a simulated cluster (see README)
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

DEBIAN_PACKAGES := pkg-config libnftnl-dev libmnl-dev nftables iproute2 conntrack iputils-arping tcpdump iperf3 procps iptables python3-venv ca-certificates
CRD := crds/egressgateways.egressgw.io.yaml
DEPLOY_CRD := deploy/crd/egressgateways.egressgw.io.yaml

.PHONY: all deps build bench-plan bench-scale bench-dataplane bench-disruption bench-drift bench-failover bench-leaks bench-programming bench-status-write crds checkov check-crds lint unit test control-plane demo clean

all: build

## deps: install the Debian packages the build and the tests need (as root; skipped when present)
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "debian packages: all present"; fi

build: deps
	$(CARGO) build --workspace

# Benchmarks (docs/BENCHMARKS.md): each target builds exactly what it runs, in release, and
# passes ARGS to the benchmark, e.g. `make bench-failover ARGS=5`; ARGS=--help lists them.
# Cargo applies --bin to every -p of one command, so every package is built by its own command.
ARGS ?=
RELEASE_DIR = $${CARGO_TARGET_DIR:-target}/release

## bench-scale: 10,000 pods, 500 gateways, 100 nodes against the real control plane (as root, ~6 min, then the 3-node baseline; ARGS go to both runs)
bench-scale: deps control-plane
	$(CARGO) build --release -p egressgw --bin egressgw
	$(CARGO) build --release -p egressgw-bench-scale --bin bench-scale
	$(RELEASE_DIR)/bench-scale $(ARGS)
	$(RELEASE_DIR)/bench-scale --baseline $(ARGS)

## bench-dataplane: nftables sets vs one iptables rule per pod in a scratch namespace (as root; ARGS="--sizes 10000,100000 --repeat 21")
bench-dataplane: deps
	$(CARGO) build --release -p egressgw-bench-dataplane --bin bench-dataplane
	$(RELEASE_DIR)/bench-dataplane $(ARGS)

## bench-drift: drift repair times per tampering, on one node and end to end with the leak probe (as root)
bench-drift: deps control-plane
	$(CARGO) build -p egressgw --bin egressgw
	$(CARGO) test -p egressgw-tests --test dataplane_drift --test e2e_drift -- --include-ignored --nocapture --test-threads=1 2>&1 \
	  | grep -oE 'drift-(repair|e2e) .*|test result: .*'

## bench-failover: failover time on the simulated cluster (as root; ARGS=<trials>, default 20)
bench-failover: deps control-plane
	$(CARGO) build --release -p egressgw --bin egressgw
	$(CARGO) build --release -p egressgw-bench-runtime --bin failover
	$(RELEASE_DIR)/failover $(ARGS)

## bench-leaks: the leak probe through every failure event of issue 11, many trials each (as root; ARGS="--trials 20 --parallel 2")
bench-leaks: deps control-plane
	$(CARGO) build --release -p egressgw --bin egressgw
	$(CARGO) build --release -p egressgw-bench-runtime --bin leaks
	$(RELEASE_DIR)/leaks $(ARGS)

## bench-disruption: egress through control-plane outages, slow apiservers and agent upgrades (as root; ARGS="--trials N --outage-secs S --only ROWS")
bench-disruption: deps control-plane
	$(CARGO) build --release -p egressgw --bin egressgw
	$(CARGO) build --release -p egressgw-bench-runtime --bin disruption
	$(RELEASE_DIR)/disruption $(ARGS)

## bench-programming: apply-to-kernel latency on the simulated cluster (as root; ARGS=<pods>, default 1000)
bench-programming: deps control-plane
	$(CARGO) build --release -p egressgw --bin egressgw
	$(CARGO) build --release -p egressgw-bench-runtime --bin programming
	$(RELEASE_DIR)/programming $(ARGS)

## bench-status-write: status as server-side apply vs one JSON patch, against the real apiserver
bench-status-write: control-plane
	$(CARGO) build --release -p egressgw-bench-runtime --bin status-write
	$(RELEASE_DIR)/status-write $(ARGS)

## bench-plan: the planner benchmark (10k pods, 500 gateways, 100 nodes)
bench-plan:
	$(CARGO) bench -p egressgw --bench plan

## crds: regenerate the committed CRD from the Rust types
crds:
	$(CARGO) run -q -p egressgw --bin egressgw -- crd > $(CRD)
	cp $(CRD) $(DEPLOY_CRD)

## checkov: scan the rendered install manifests and the Dockerfile (installs checkov in a venv)
checkov:
	hack/checkov.sh

## check-crds: fail when the committed CRD differs from what the code generates
check-crds:
	@$(CARGO) run -q -p egressgw --bin egressgw -- crd | diff -u $(CRD) - \
	  || { echo "error: $(CRD) is stale; run 'make crds' and commit it" >&2; exit 1; }
	@diff -u $(CRD) $(DEPLOY_CRD) \
	  || { echo "error: $(DEPLOY_CRD) differs from $(CRD); run 'make crds' and commit it" >&2; exit 1; }

## lint: rustfmt and clippy -D warnings (adds the two rustup components when missing)
lint:
	@$(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1 \
	  || rustup component add rustfmt clippy
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## control-plane: build kube-apiserver and etcd from Go modules into ~/.cache/egressgw (once)
control-plane:
	@if [ -x hack/control-plane/build.sh ]; then hack/control-plane/build.sh; fi

## unit: the fast tests only (no root, no control plane)
unit: deps
	$(CARGO) test --workspace --lib --bins --tests

## test: every test on a fresh machine, as root
# Tests that need root, network namespaces or the real control plane carry
# #[ignore = "<why>"]; plain `cargo test` skips them, `make test` runs them all.
test: deps check-crds lint control-plane checkov
	$(CARGO) build -p egressgw --bins
	$(CARGO) test --workspace --lib --bins --tests -- --include-ignored --test-threads=$${TEST_THREADS:-4}
	$(CARGO) test --workspace --benches --no-run

## demo: egressgw on a simulated 3-node cluster (as root), narrated
demo: deps control-plane
	$(CARGO) build -q -p egressgw --bin egressgw
	$(CARGO) build -q -p egressgw-tests --bin demo
	$${CARGO_TARGET_DIR:-target}/debug/demo

clean:
	$(CARGO) clean
