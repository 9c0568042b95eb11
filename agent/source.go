package agent

import (
	"context"
	"log/slog"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/metrics"
)

// fileSource keeps the state equal to the compiled local configuration files (config/local.Watcher
// re-reads them once a change has settled); a version that does not load or compile is rejected,
// logged and counted, and the last good state keeps serving.
type fileSource struct {
	watch   *local.Watcher
	opts    local.Options
	store   *state.Store
	metrics *metrics.Metrics
	log     *slog.Logger
}

func newFileSource(cfg Config, store *state.Store, m *metrics.Metrics, log *slog.Logger) *fileSource {
	s := &fileSource{store: store, metrics: m, log: log, opts: local.Options{
		TrustDomain: cfg.TrustDomain, DomainSuffix: cfg.DomainSuffix, ClusterID: cfg.ClusterID, Network: cfg.Network,
	}}
	s.watch = &local.Watcher{Paths: cfg.ConfigFiles, Poll: cfg.ConfigPoll, Changed: s.changed}
	return s
}

// load reads and applies the files once; it fails when they are invalid (used at start-up).
func (s *fileSource) load() error {
	files, err := s.watch.Read()
	if err != nil {
		return err
	}
	return s.apply(files)
}

func (s *fileSource) run(ctx context.Context) error { return s.watch.Run(ctx) }

func (s *fileSource) changed(files []local.File, err error) {
	if err == nil {
		err = s.apply(files)
	}
	if err != nil {
		s.metrics.ConfigReloads.WithLabelValues("rejected").Inc()
		s.log.Error("configuration rejected; keeping the last good state", "err", err)
	}
}

func (s *fileSource) apply(files []local.File) error {
	res, err := local.CompileFiles(files, s.opts)
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		s.log.Warn("configuration warning", "warning", w)
	}
	s.store.Replace(&res.Snapshot)
	wl, svc, pol := s.store.Counts()
	s.metrics.StateApplied(wl, svc, pol)
	s.log.Info("configuration applied", "workloads", wl, "services", svc, "policies", pol)
	return nil
}
