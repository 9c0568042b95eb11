// Command killtest proves that no test run can break the next one: it runs tiers and SIGKILLs them at random
// points, then (after the normal tests have run) checks that nothing the killed runs made is left.
//
//	go run ./hack/killtest kill -n 2 [-tiers agents,kube,demo] [-state bin/killtest/state.json]
//	(run the normal tests)
//	go run ./hack/killtest check [-state bin/killtest/state.json]
//
// kill records a baseline (host nftables tables, temporary directory entries), builds the tiers' binaries (the
// agent package's tests with -race, the Kubernetes tier's with -race -tags e2e, the demo), and N times: starts a
// tier in a fresh cgroup (cgroup2), waits for a random kill point of that tier (lab up; agents running; the kube
// tier's control plane up, or its agents running), waits a random delay more, and SIGKILLs the tier's process
// alone (its process group is left alone, so only the death signals and the tier's own ownership rules clean up).
// It then waits for the cgroup to empty: a process still in it is a leftover (recorded, then killed).
//
// check fails, naming each, when anything of a killed run remains: network namespaces, nsfs mounts (and any
// covered nsfs mount under /run/netns), lab lock files, bpffs pins, nftables tables in the host namespace that were
// not there before, processes, listening ports the killed run had open, or more than -temp-bound bytes of new
// test entries (ambit-*, bench-*, Test*) in the temporary directory.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// State is what kill hands to check.
type State struct {
	Started    time.Time `json:"started"`
	TmpEntries []string  `json:"tmp_entries"`
	NFTTables  []string  `json:"nft_tables"`
	Work       string    `json:"work"`
	Kills      []Kill    `json:"kills"`
}

// Kill is one killed run.
type Kill struct {
	Tier  string        `json:"tier"`
	Point string        `json:"point"`
	Delay time.Duration `json:"delay"`
	Pid   int           `json:"pid"`
	// Ports the run's processes were listening on (host network namespace) just before the kill.
	Ports []int `json:"ports"`
	// Leftovers are processes still in the run's cgroup after the drain timeout.
	Leftovers []string `json:"leftovers"`
	Took      string   `json:"took"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: killtest kill|check [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("killtest "+os.Args[1], flag.ExitOnError)
	state := fs.String("state", "bin/killtest/state.json", "state file written by kill and read by check")
	n := fs.Int("n", 2, "kill: number of killed runs")
	tiers := fs.String("tiers", "agents,kube", "kill: tiers to kill in turn (agents, kube, demo); kube falls back to demo without peers")
	seed := fs.Uint64("seed", 0, "kill: random seed (0: from the clock; printed)")
	maxDelay := fs.Duration("max-delay", 3*time.Second, "kill: longest random delay after the kill point")
	drain := fs.Duration("drain", 60*time.Second, "kill: how long a killed run's processes may take to die")
	tempBound := fs.Int64("temp-bound", 64<<20, "check: bytes of new temporary directory entries allowed")
	_ = fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "kill":
		err = kill(ctx, *state, *n, strings.Split(*tiers, ","), *seed, *maxDelay, *drain)
	case "check":
		err = check(*state, *tempBound)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "killtest:", err)
		os.Exit(1)
	}
}

func writeState(path string, s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no state in %s: run `killtest kill` (make test-killed) first", path)
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return &s, nil
}
