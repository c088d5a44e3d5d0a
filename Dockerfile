# egressgw image: the `egressgw` binary (controller, agent, crd) and the `kubectl-egress`
# plugin. Build: docker build -t ghcr.io/egressgw/egressgw:0.1.0 .
#
# Kubernetes probes /healthz and /readyz (deploy/); an image HEALTHCHECK would be ignored.
#checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; the Deployment and DaemonSet probe /healthz and /readyz

# --- build: Rust and the libnftnl/libmnl headers ---------------------------------------------
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libnftnl-dev libmnl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p egressgw --bins \
 && install -D -s -t /out target/release/egressgw target/release/kubectl-egress

# --- runtime: the two shared libraries the dataplane links, nothing else ----------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftnl11 libmnl0 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/egressgw /out/kubectl-egress /usr/local/bin/
# Non-root by default (the controller); the agent's DaemonSet runs it as uid 0 with only
# NET_ADMIN and NET_RAW, because added capabilities are effective only for uid 0.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/egressgw"]
