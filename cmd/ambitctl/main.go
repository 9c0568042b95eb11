// Command ambitctl is Ambit's command-line tool: waypoint management in istioctl's words, node-level debugging
// of a running agent (ambitctl node ..., also ztunnel-config/zc, as istioctl ztunnel-config), and offline
// inspection of a local configuration (which waypoint binds what, and how a connection is routed).
//
// It reaches a running agent only through its admin API: it imports admin/dump, mesh/ and config/local
// of Ambit, never agent/, waypoint/ or the data-plane packages (hbone, xdsclient, redirect, bpf), so
// `ambitctl explain` runs the same route.Build and config/local.Compile the agent runs.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes: 1 for failures, 2 for bad input (flags, arguments, configuration files). The commands that
// reproduce istioctl's (annotated with istioctlExitCodes) exit as istioctl does instead: 64 (its
// ExitIncorrectUsage) for flag errors and 1 for every other failure.
const (
	exitFailure        = 1
	exitBadInput       = 2
	exitIncorrectUsage = 64
)

// istioctlExitCodes is the annotation key that marks a command whose exit codes are istioctl's.
const istioctlExitCodes = "ambitctl/istioctl-exit-codes"

// istioctlParity returns the annotations of a command that exits with istioctl's codes.
func istioctlParity() map[string]string { return map[string]string{istioctlExitCodes: "true"} }

// inputError marks an error caused by the user's input; it exits with code 2.
type inputError struct{ err error }

func (e inputError) Error() string { return e.err.Error() }
func (e inputError) Unwrap() error { return e.err }

func badInput(format string, args ...any) error { return inputError{fmt.Errorf(format, args...)} }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes ambitctl with args and returns the exit code. It is the only place that decides one.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	// Cobra validates arguments and flags before any PersistentPreRun; an error before it is bad input.
	parsed := false
	root.PersistentPreRun = func(*cobra.Command, []string) { parsed = true }
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	if cmd != nil && cmd.Annotations[istioctlExitCodes] != "" {
		// istioctl's GetExitCode: usage errors (flags, or any "unknown command") are 64, the rest 1.
		if isFlagError(err) || strings.Contains(err.Error(), "unknown command") {
			return exitIncorrectUsage
		}
		return exitFailure
	}
	var ie inputError
	if errors.As(err, &ie) || isFlagError(err) || !parsed {
		return exitBadInput
	}
	return exitFailure
}

// rootFlags are the flags every command shares.
type rootFlags struct {
	namespace string
}

func newRootCmd() *cobra.Command {
	rf := &rootFlags{}
	root := &cobra.Command{
		Use:           "ambitctl",
		Short:         "Ambit's command-line tool",
		Long:          "ambitctl manages waypoints the way istioctl does and explains how Ambit binds and routes traffic.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return flagError{err} })
	root.PersistentFlags().StringVarP(&rf.namespace, "namespace", "n", "", "Kubernetes namespace")
	root.AddCommand(newWaypointCmd(rf), newExplainCmd(rf), newNodeCmd(rf), newZtunnelConfigCmd(rf))
	return root
}

// flagError marks a flag parsing error (bad input).
type flagError struct{ err error }

func (e flagError) Error() string { return e.err.Error() }

func isFlagError(err error) bool {
	var fe flagError
	return errors.As(err, &fe)
}
