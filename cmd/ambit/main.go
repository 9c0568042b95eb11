// Command ambit is Ambit's data-plane binary: `ambit agent` is the node agent (the role of Istio's
// ztunnel, package agent); `ambit waypoint` is the waypoint (the role of Envoy waypoints, package
// waypoint); `ambit eastwest` is a network's east-west gateway for multi-network meshes (package
// eastwest); `ambit cleanup` removes capture from a node. It only parses flags and environment variables
// and exits; it is the one place that imports both processes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ambit-mesh/ambit/admin"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/proxy/memory"
	"github.com/ambit-mesh/ambit/proxy/memory/exepages"
	"github.com/ambit-mesh/ambit/proxy/relay"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit code; it is the only place that decides one.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "ambit",
		Short:         "Ambit: an eBPF-assisted Istio ambient node agent and waypoint",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newAgentCmd(stderr), newWaypointCmd(stderr), newEastWestCmd(stderr), newCleanupCmd(stdout), newVersionCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	return 0
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), admin.Version) },
	}
}

// logFlags configure the process logger.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *pflag.FlagSet, envs map[string]string) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
	envs["log-level"] = "LOG_LEVEL"
	envs["log-format"] = "LOG_FORMAT"
}

// logger builds the process logger; the returned LevelVar changes its level at runtime (admin API).
func (l *logFlags) logger(w io.Writer) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if err := lv.UnmarshalText([]byte(l.level)); err != nil {
		return nil, nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), lv, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	}
	return nil, nil, fmt.Errorf("--log-format %q: use text or json", l.format)
}

// memFlags configure the return of memory to the OS after connection bursts (package proxy/memory) and of
// the executable's start-up pages once the process is ready (package proxy/memory/exepages).
type memFlags struct {
	releaseInterval time.Duration
	trimStartup     bool
}

func (m *memFlags) register(fs *pflag.FlagSet, envs map[string]string) {
	fs.DurationVar(&m.releaseInterval, "memory-release-interval", memory.DefaultInterval,
		"when the goroutine count falls well below its recent peak (a connection burst ended), return free memory "+
			"to the OS, at most once per this interval (0: never; GOGC and GOMEMLIMIT apply as usual)")
	envs["memory-release-interval"] = "AMBIT_MEMORY_RELEASE_INTERVAL"
	fs.BoolVar(&m.trimStartup, "trim-startup-pages", true,
		"once ready, drop the executable's resident code and read-only data pages (those still in use are mapped back from the page cache): "+
			"the resident memory start-up and package initialisation touched")
	envs["trim-startup-pages"] = "AMBIT_TRIM_STARTUP_PAGES"
}

// run runs fn with a memory.Releaser beside it, stopped when fn returns, and (--trim-startup-pages) drops
// the executable's start-up pages once ready reports true.
func (m *memFlags) run(ctx context.Context, log *slog.Logger, ready func() (bool, []string), fn func(context.Context) error) error {
	interval := m.releaseInterval
	disableZero(&interval)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	r := &memory.Releaser{Policy: memory.Policy{Interval: interval}, Logger: log.With("component", "memory"),
		Extra: func() int { return relay.Live() + memory.ConnWeight*hbone.LiveConns() }}
	wg.Go(func() { r.Run(ctx) })
	if m.trimStartup {
		isReady := func() bool { ok, _ := ready(); return ok }
		wg.Go(func() { exepages.RunOnReady(ctx, isReady, log.With("component", "memory")) })
	}
	return fn(ctx)
}

// hboneFlags are the HBONE server and pool bounds both processes take (fields of their Configs).
type hboneFlags struct {
	handshake, idle, poolIdle *time.Duration
	maxConns                  *int
}

// register adds the flags with hbone's defaults (Envoy's and ztunnel's, see hbone/README.md "Limits").
func (h hboneFlags) register(fs *pflag.FlagSet, envs map[string]string) {
	fs.DurationVar(h.handshake, "hbone-handshake-timeout", hbone.DefaultHandshakeTimeout,
		"how long an inbound HBONE connection may take for its TLS handshake and HTTP/2 preface")
	envs["hbone-handshake-timeout"] = "AMBIT_HBONE_HANDSHAKE_TIMEOUT"
	fs.DurationVar(h.idle, "hbone-idle-timeout", hbone.DefaultServerIdleTimeout,
		"close an inbound HBONE connection without streams after this long (0: never)")
	envs["hbone-idle-timeout"] = "AMBIT_HBONE_IDLE_TIMEOUT"
	fs.IntVar(h.maxConns, "hbone-max-connections", 0,
		"cap on open inbound HBONE connections; beyond it new ones are closed at accept and counted (0: no cap)")
	envs["hbone-max-connections"] = "AMBIT_HBONE_MAX_CONNECTIONS"
	fs.DurationVar(h.poolIdle, "pool-idle-timeout", hbone.DefaultIdleTimeout,
		"close an outbound HBONE connection without streams after this long (0: never)")
	envs["pool-idle-timeout"] = "POOL_UNUSED_RELEASE_TIMEOUT"
}

// disableZero turns a flag's 0 ("never") into the negative duration the Configs read as disabled
// (their zero value means the default).
func disableZero(ds ...*time.Duration) {
	for _, d := range ds {
		if *d == 0 {
			*d = -1
		}
	}
}

// applyEnv sets every flag that was not given on the command line from its environment variable.
func applyEnv(fs *pflag.FlagSet, envs map[string]string) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		env, ok := envs[f.Name]
		if !ok || f.Changed {
			return
		}
		if v, set := os.LookupEnv(env); set && v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// envTable documents the flag/environment pairs (used by `ambit agent --help`).
func envTable(fs *pflag.FlagSet, envs map[string]string) string {
	var b strings.Builder
	b.WriteString("\nEnvironment (used when the flag is not given):\n")
	fs.VisitAll(func(f *pflag.Flag) {
		if env, ok := envs[f.Name]; ok {
			fmt.Fprintf(&b, "  %-26s --%s\n", env, f.Name)
		}
	})
	return b.String()
}

func lookupEnv(name string) (string, bool) { return os.LookupEnv(name) }
