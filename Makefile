# Ambit Makefile. Run `make help` for the targets.

.DEFAULT_GOAL := help
GO ?= go
BIN ?= bin
# Release-style builds, as the Dockerfile's: no DWARF or symbol table, no local paths. Stripping takes bin/ambit
# from ~106 MB to ~74 MB; the waypoint's resident memory counts the binary pages it touches (~3 MB less).
BUILDFLAGS ?= -trimpath -ldflags='-s -w'
# Static, as the Dockerfile's: with cgo (the default when a C compiler is found) the binary maps libc and the
# dynamic loader, ~1.3 MiB more resident memory in every process, for the cgo DNS resolver nothing here needs.
# Only for the binaries: -race needs cgo.
BUILDENV ?= CGO_ENABLED=0
FUZZTIME ?= 30s
# Root-only tests skip without root; CI sets AMBIT_REQUIRE_ROOT=1 so that they fail instead.
TEST_TIMEOUT ?= 30m

.PHONY: help
help: ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build bin/ambit and bin/ambitctl (no clang needed: BPF objects are committed)
	$(BUILDENV) $(GO) build $(BUILDFLAGS) -o $(BIN)/ambit ./cmd/ambit
	$(BUILDENV) $(GO) build $(BUILDFLAGS) -o $(BIN)/ambitctl ./cmd/ambitctl

# The steps of `make test`, in order, each timed by hack/timed.sh (into $$AMBIT_TIMINGS: .ci/run prints them). The
# kills come first so that every later tier runs after killed runs, and test-leftovers last checks nothing is left.
TEST_STEPS := lint verify-gen peers test-killed-short test-unit test-interop test-helm test-spire test-e2e test-e2e-kube test-leftovers
KILL_STATE ?= $(BIN)/killtest/state.json

.PHONY: test
test: ## everything CI runs (root; builds peers into AMBIT_PEER_CACHE on first use), each step timed
	@set -e; for step in $(TEST_STEPS); do hack/timed.sh $$step $(MAKE) --no-print-directory $$step; done

.PHONY: peers
peers: ## build every peer into AMBIT_PEER_CACHE (cold: tens of minutes on 2 cores; warm: seconds)
	hack/peers/build-spire.sh >/dev/null
	hack/peers/build-kube-stack.sh >/dev/null

.PHONY: test-killed-short
test-killed-short: ## part of make test: SIGKILL the agents tier and the kube tier once each at random points (root)
	$(GO) run ./hack/killtest kill -n 2 -tiers agents,kube -state $(KILL_STATE)

.PHONY: test-leftovers
test-leftovers: ## part of make test: check that the runs test-killed-short killed left nothing (after the normal tests)
	$(GO) run ./hack/killtest check -state $(KILL_STATE)

KILLS ?= 6
.PHONY: test-killed
test-killed: ## SIGKILL the agents tier, the kube tier and the demo KILLS=6 times at random points, run those tiers normally, check nothing is left (root)
	$(GO) run ./hack/killtest kill -n $(KILLS) -tiers agents,kube,demo -state $(KILL_STATE)
	AMBIT_REQUIRE_ROOT=1 $(GO) test -race -count=1 ./test/lab/ ./test/netns/ ./test/proc/ ./agent/
	set -e; peers=$$(hack/peers/build-kube-stack.sh); env $$peers AMBIT_REQUIRE_ROOT=1 $(GO) test -tags e2e -race -count=1 -timeout 20m -run 'TestInstall$$' ./test/e2e/kube/
	$(GO) run ./hack/killtest check -state $(KILL_STATE)

.PHONY: test-unit
test-unit: ## all Go tests of the module with -race: pure, in-process, and root network-namespace tiers
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

.PHONY: test-spire
test-spire: ## SPIFFE Workload API against a real SPIRE server and agent (built into AMBIT_PEER_CACHE on first use)
	set -e; bin=$$(hack/peers/build-spire.sh); AMBIT_SPIRE_BIN_DIR=$$bin AMBIT_REQUIRE_PEERS=1 $(GO) test -race -count=1 -v ./test/spire/

.PHONY: test-e2e
test-e2e: ## real-istiod tier: build etcd, kube-apiserver, istiod into AMBIT_PEER_CACHE (cold ~10 min, warm <1 s), run test/e2e
	set -e; peers=$$(hack/peers/build-istio-stack.sh); env $$peers $(GO) test -tags e2e -race -count=1 -timeout 20m -v ./test/e2e/

.PHONY: test-e2e-kube
test-e2e-kube: ## Kubernetes tier: the above plus kube-controller-manager, kube-scheduler, istioctl, Istio echo; netns kubelet, DaemonSet, walkthrough, L7, Gateway API mesh conformance
	set -e; peers=$$(hack/peers/build-kube-stack.sh); env $$peers AMBIT_REQUIRE_PEERS=1 $(GO) test -tags e2e -race -count=1 -timeout 25m -v ./test/e2e/kube/

.PHONY: test-short
test-short: ## unit tests only, no race detector (fast inner loop)
	$(GO) test -count=1 -short ./...

.PHONY: lint
lint: ## gofmt, go vet, staticcheck, go.mod tidiness
	@files=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$')); if [ -n "$$files" ]; then echo "gofmt needed:"; echo "$$files"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e/...
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags e2e ./test/e2e/...
	$(GO) mod tidy -diff

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 30s); crashers land in testdata/fuzz
	@grep -rl --include='*_test.go' '^func Fuzz' --exclude-dir=hboneinterop . | xargs -n1 dirname | sort -u | while read -r d; do \
		for f in $$(grep -h '^func Fuzz' $$d/*_test.go | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
			echo "== $$d $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$d/ || exit 1; \
		done; done

.PHONY: bench
bench: ## Go micro-benchmarks (config compile, state memory, route planning; medians of 5), then bench-agent (root)
	$(GO) test -run '^$$' -bench 'Compile|StateMemory' -benchtime 5x -count 5 ./config/local/
	$(GO) test -run '^$$' -bench 'Build' -count 5 ./mesh/route/
	$(MAKE) bench-agent

.PHONY: soak
soak: ## soak both agents: 10,000 long-lived conns, 1,000 new conn/s, policy churn every 10 s for SOAK_TIME=10m; goroutines, fds, RSS must stay flat (root; needs iperf3)
	$(GO) build -o $(BIN)/ambit ./cmd/ambit
	$(GO) run ./hack/bench-agent -bin $(BIN) -soak $(or $(SOAK_TIME),10m)

.PHONY: bench-agent
bench-agent: ## node agent vs direct in the lab: iperf3, fortio latency and conn/s, agent CPU and RSS; medians of ROUNDS=5 (root, ~10 min; needs iperf3)
	$(BUILDENV) $(GO) build $(BUILDFLAGS) -o $(BIN)/ambit ./cmd/ambit
	$(GO) run ./hack/bench-agent -bin $(BIN) -rounds $(or $(ROUNDS),5)

.PHONY: generate
generate: ## regenerate the bpf2go output in bpf/ (needs clang and llvm-strip)
	env -u BPF2GO_CC -u BPF2GO_CFLAGS -u BPF2GO_STRIP -u BPF2GO_MAKEBASE $(GO) generate ./bpf/...

.PHONY: verify-gen
verify-gen: ## fail if the committed bpf2go output is stale (skipped without clang)
	hack/verify-gen.sh

.PHONY: test-root
test-root: ## run the root-only BPF, capture and lab tests (fails instead of skipping when not root)
	AMBIT_REQUIRE_ROOT=1 $(GO) test -race -count=1 ./bpf/... ./redirect/... ./test/lab/... ./test/netns/...

.PHONY: bench-capture
bench-capture: ## capture benchmarks: BPF per-packet cost and lab direct/eBPF/TPROXY, medians of 5 runs (root)
	hack/bench-capture.sh 5

LAB ?= demo
.PHONY: lab-up
lab-up: ## bring up a network-namespace lab by hand (LAB=name NODES=2 PODS=2; root)
	$(GO) run ./hack/lab up -name $(LAB) -nodes $(or $(NODES),2) -pods $(or $(PODS),2)

.PHONY: lab-down
lab-down: ## remove the lab LAB (default demo)
	$(GO) run ./hack/lab down -name $(LAB)

.PHONY: demo
demo: build ## the one-command demo (root): two lab nodes, agents, waypoints and the waypoint walkthrough
	$(GO) run ./hack/demo -bin $(BIN)

.PHONY: test-interop
test-interop: ## HBONE interop with istio.io/istio/pkg/hbone (separate module test/hboneinterop; needs the Go module proxy)
	cd test/hboneinterop && $(GO) test -mod=mod -race -count=1 ./...

.PHONY: test-helm
test-helm: ## render charts/ambit with Helm's Go packages and check it against manifests/ambit.yaml (separate module test/helmcheck)
	cd test/helmcheck && $(GO) test -mod=mod -count=1 ./...

.PHONY: fuzz-hbone
fuzz-hbone: ## run the hbone fuzz targets (frames both roles, authority, baggage, forwarded, traceparent) for FUZZTIME each
	for f in FuzzServerFrames FuzzClientFrames FuzzParseAuthority FuzzParseBaggage FuzzParseForwarded FuzzParseTraceparent; do \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) ./hbone/ || exit 1; done

.PHONY: bench-hbone
bench-hbone: ## HBONE vs raw TCP, plain TLS 1.3 and net/http h2: table of medians and ratios (ROUNDS=5)
	$(GO) run ./hack/bench-hbone -rounds $(or $(ROUNDS),5)

.PHONY: bench-waypoint
bench-waypoint: ## L7 waypoint: Ambit vs nginx and HAProxy (apt) per core, latency, memory; HBONE path vs direct (root) (ROUNDS=5)
	$(GO) build $(BUILDFLAGS) -o $(BIN)/bench-waypoint ./hack/bench-waypoint
	$(BIN)/bench-waypoint -rounds $(or $(ROUNDS),5) -duration $(or $(DURATION),3s)

.PHONY: fuzz-l7
fuzz-l7: ## run the L7 waypoint fuzz targets (path templates, header matching, raw client bytes, JWT/JWKS) for FUZZTIME each
	$(GO) test -run '^$$' -fuzz '^FuzzPathTemplate$$' -fuzztime $(FUZZTIME) ./waypoint/policy/
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./waypoint/jwt/
	$(GO) test -run '^$$' -fuzz '^FuzzMatches$$' -fuzztime $(FUZZTIME) ./waypoint/routing/
	$(GO) test -run '^$$' -fuzz '^FuzzServeConn$$' -fuzztime $(FUZZTIME) ./waypoint/engine/
