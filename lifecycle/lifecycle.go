// Package lifecycle is the one shape in which both of Ambit's processes (the node agent and the
// waypoint) run: a Group of named components, each on its own goroutine and owned by the group, and Run,
// which starts an App, serves until the context ends or a component fails, drains, stops every component
// and releases the rest, in that order (after caddy's App Start/Stop).
//
// It knows nothing about what the components do: it must not import agent/, waypoint/ or any other
// Ambit package.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Group runs components until one fails or the group is stopped. Create it with NewGroup.
type Group struct {
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	wg     sync.WaitGroup

	mu   sync.Mutex
	errs []error // guarded by mu
}

// NewGroup returns a group whose context ends with ctx, when a component fails, or on Stop.
func NewGroup(ctx context.Context, log *slog.Logger) *Group {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	return &Group{ctx: ctx, cancel: cancel, log: log}
}

// Context is the context every component runs with.
func (g *Group) Context() context.Context { return g.ctx }

// Go runs run(g.Context()) on a new goroutine. An error returned while the group runs is logged, stops
// the group and is reported by Wait; an error returned once the group's context ended (a listener closed
// under its server) is part of stopping and dropped, as is context.Canceled.
func (g *Group) Go(name string, run func(context.Context) error) {
	g.wg.Go(func() {
		err := run(g.ctx)
		if err == nil || errors.Is(err, context.Canceled) || g.ctx.Err() != nil {
			return
		}
		g.log.Error("component stopped", "name", name, "err", err)
		g.mu.Lock()
		g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
		g.mu.Unlock()
		g.cancel()
	})
}

// Stop ends the group's context; components return.
func (g *Group) Stop() { g.cancel() }

// Wait waits for every component to return and reports the errors of those that failed.
func (g *Group) Wait() error {
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return errors.Join(g.errs...)
}

// App is a process run by Run.
type App interface {
	// Start binds what the process serves and starts its components in g. It returns once the process is
	// ready, or when g's context ended first, or with the error that kept it from starting.
	Start(g *Group) error
	// Drain stops accepting new work and gives what is open until ctx ends to finish.
	Drain(ctx context.Context)
	// Close releases what Start acquired, once every component returned. It is called after a failed
	// Start too, so it must cope with a partial start.
	Close()
}

// Run runs app: Start; serve until ctx ends or a component fails; Drain for at most drain; stop every
// component and wait for them; Close. It returns Start's error or those of the components that failed.
func Run(ctx context.Context, app App, drain time.Duration, log *slog.Logger) error {
	g := NewGroup(ctx, log)
	if err := app.Start(g); err != nil {
		g.Stop()
		werr := g.Wait()
		app.Close()
		return errors.Join(err, werr)
	}
	<-g.Context().Done()
	dctx, cancel := context.WithTimeout(context.Background(), drain)
	app.Drain(dctx)
	cancel()
	g.Stop()
	err := g.Wait()
	app.Close()
	return err
}
