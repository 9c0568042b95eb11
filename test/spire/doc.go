// Package spire runs a real SPIRE server and agent (github.com/spiffe/spire, built by
// hack/peers/build-spire.sh) on loopback and unix sockets for tests: join-token node attestation, the unix
// workload attestor, and registration entries created through the spire-server CLI.
//
// The binaries are found through AMBIT_SPIRE_BIN_DIR or the peer cache
// (${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/spire-<Version>/bin). Tests that need them skip when they are
// absent, unless AMBIT_REQUIRE_PEERS=1, which turns the skip into a failure.
package spire
