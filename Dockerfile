# syntax=docker/dockerfile:1
# Ambit's two images, one binary (`ambit`: agent and waypoint modes) and `ambitctl`:
#   docker build -t ghcr.io/ambit-mesh/ambit .                                   the node agent (default target)
#   docker build --target waypoint -t ghcr.io/ambit-mesh/ambit-waypoint .       waypoints
# The waypoint image carries no file capabilities: istiod's waypoint template drops ALL capabilities and forbids
# privilege escalation, and the kernel refuses to exec a binary whose file capabilities cannot be granted.
# No clang is needed: the BPF objects are generated and committed in bpf/.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/ambit-mesh/ambit/admin.Version=${VERSION}" -o /out/ambit ./cmd/ambit \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/ambitctl ./cmd/ambitctl

# Waypoints need no kernel privileges and no tools: a static binary on a minimal base, non-root.
FROM gcr.io/distroless/static-debian12:nonroot AS waypoint
COPY --from=build /out/ambit /usr/local/bin/ambit
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/ambit"]
CMD ["waypoint"]

# The node agent (last stage: the default target). It drives nftables (TPROXY mode, and the notrack rule of
# eBPF mode) through the nft tool.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables libcap2-bin ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ambit /out/ambitctl /usr/local/bin/
# File capabilities let the agent run as a non-root user: BPF programs and maps, TCX links,
# transparent sockets, marks and routing rules. Exactly the chart's agent.capabilities: the kernel refuses
# to exec a binary whose file capabilities exceed the container's bounding set (test/helmcheck checks it).
RUN setcap cap_net_admin,cap_bpf,cap_perfmon+ep /usr/local/bin/ambit \
 && useradd --system --uid 1337 --no-create-home ambit
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/ambit"]
