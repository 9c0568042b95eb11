// Command lab brings an Ambit network-namespace lab (package test/lab) up or down by hand, for trying capture
// and the agent on one machine. It needs root.
//
//	go run ./hack/lab up [-name demo] [-nodes 2] [-pods 2]   # build the lab and print its layout
//	go run ./hack/lab list                                    # list labs
//	go run ./hack/lab down [-name demo | -all]                # remove a lab (or every lab not in use)
//
// A lab made here is kept until `down` (tests' sweeps leave it alone); `down` refuses a lab that a live process
// (a test, the demo) owns.
// Run commands in a namespace with `ip netns exec <namespace> <command>`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ambit-mesh/ambit/test/lab"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: lab up|down|list [flags]")
		return 2
	}
	fs := flag.NewFlagSet("lab "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "demo", "lab name (namespaces are called "+lab.NamePrefix+"m-<name>-...)")
	nodes := fs.Int("nodes", 2, "number of nodes")
	pods := fs.Int("pods", 2, "pods per node")
	all := fs.Bool("all", false, "down: remove every lab, including those of tests")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	full := lab.NamePrefix + "m-" + *name
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "up":
		err = up(ctx, stdout, full, *nodes, *pods)
	case "down":
		err = down(stdout, full, *all)
	case "list":
		var names []string
		if names, err = lab.List(); err == nil {
			for _, n := range names {
				fmt.Fprintln(stdout, n)
			}
		}
	default:
		err = fmt.Errorf("unknown command %q (want up, down or list)", args[0])
	}
	if err != nil {
		fmt.Fprintln(stderr, "lab:", err)
		return 1
	}
	return 0
}

func up(ctx context.Context, w io.Writer, name string, nodes, pods int) error {
	// Keep: the lab outlives this command (lab.Sweep leaves it alone) until `lab down`.
	l, err := lab.New(ctx, lab.Options{Name: name, Nodes: nodes, PodsPerNode: pods, Keep: true})
	if err != nil {
		return err
	}
	if err := l.Release(); err != nil {
		return err
	}
	fmt.Fprintf(w, "lab %s is up (remove it with: go run ./hack/lab down -name %s)\n\n", l.Name, strings.TrimPrefix(name, lab.NamePrefix+"m-"))
	fmt.Fprintf(w, "%-28s %-16s %-18s %s\n", "namespace", "ipv4", "ipv6", "interface")
	for _, n := range l.Nodes {
		fmt.Fprintf(w, "%-28s %-16s %-18s %s (uplink), bpffs pins: %s\n", n.NS.Name, n.IP, n.IP6, n.Uplink, n.PinDir)
		for _, p := range n.Pods {
			fmt.Fprintf(w, "  %-26s %-16s %-18s eth0 (node side %s, uid %s)\n", p.NS.Name, p.IP, p.IP6, p.HostVeth, p.UID)
		}
	}
	if len(l.Nodes) > 1 && len(l.Nodes[1].Pods) > 0 && len(l.Nodes[0].Pods) > 0 {
		a, b := l.Nodes[0].Pods[0], l.Nodes[1].Pods[0]
		fmt.Fprintf(w, "\ntry: ip netns exec %s nc -l -p 8080 &  ip netns exec %s nc %s 8080\n", b.NS.Name, a.NS.Name, b.IP)
	}
	return nil
}

func down(w io.Writer, name string, all bool) error {
	names := []string{name}
	if all {
		var err error
		if names, err = lab.List(); err != nil {
			return err
		}
	}
	var errs []error
	for _, n := range names {
		if err := lab.Remove(n); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(w, "removed %s\n", n)
	}
	return errors.Join(errs...)
}
