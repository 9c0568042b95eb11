# Ambit Makefile. Run `make help` for the targets.

.DEFAULT_GOAL := help
GO ?= go

.PHONY: help
help: ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: generate
generate: ## regenerate the bpf2go output in bpf/ (needs clang and llvm-strip)
	env -u BPF2GO_CC -u BPF2GO_CFLAGS -u BPF2GO_STRIP -u BPF2GO_MAKEBASE $(GO) generate ./bpf/...

.PHONY: verify-gen
verify-gen: ## fail if the committed bpf2go output is stale (skipped without clang)
	hack/verify-gen.sh

.PHONY: test-root
test-root: ## run the root-only BPF, capture and lab tests (fails instead of skipping when not root)
	AMBIT_REQUIRE_ROOT=1 $(GO) test -race -count=1 ./bpf/... ./redirect/... ./test/lab/...

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
