package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/metrics"
)

// fileSource keeps the state equal to the compiled local configuration files. It re-reads them when
// their content changes and has stayed the same for one poll interval (so a half-written file is never
// applied); a version that does not load or compile is rejected, logged and counted, and the last good
// state keeps serving.
type fileSource struct {
	files   []string
	poll    time.Duration
	cfg     Config
	store   *state.Store
	metrics *metrics.Metrics
	log     *slog.Logger

	digest  [sha256.Size]byte // of the last content handled (applied or rejected); owned by run
	pending [sha256.Size]byte // of new content seen once; applied when the next poll sees it unchanged
}

// load reads and applies the files once; it fails when they are invalid (used at start-up).
func (s *fileSource) load() error {
	data, digest, err := s.read()
	if err != nil {
		return err
	}
	s.digest = digest
	return s.apply(data)
}

func (s *fileSource) run(ctx context.Context) error {
	t := time.NewTicker(s.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		data, digest, err := s.read()
		if digest == s.digest {
			continue
		}
		// An editor or a copy may be half-way through writing: only content that stays the same for one
		// poll interval is applied (or rejected).
		if digest != s.pending {
			s.pending = digest
			continue
		}
		s.digest = digest
		if err != nil {
			s.reject(err)
			continue
		}
		if err := s.apply(data); err != nil {
			s.reject(err)
		}
	}
}

func (s *fileSource) reject(err error) {
	s.metrics.ConfigReloads.WithLabelValues("rejected").Inc()
	s.log.Error("configuration rejected; keeping the last good state", "err", err)
}

// fileData is the content of one configuration file.
type fileData struct {
	name string
	data []byte
}

// read returns the content of every configuration file (directories expanded, sorted) and its digest.
// A read error is returned with a digest of the error, so that the same error is reported once.
func (s *fileSource) read() ([]fileData, [sha256.Size]byte, error) {
	var out []fileData
	h := sha256.New()
	for _, p := range s.files {
		names := []string{p}
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			names = nil
			ents, err := os.ReadDir(p)
			if err != nil {
				return nil, sha256.Sum256([]byte(err.Error())), fmt.Errorf("read config dir: %w", err)
			}
			for _, e := range ents {
				if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
					names = append(names, filepath.Join(p, e.Name()))
				}
			}
			slices.Sort(names)
		}
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				return nil, sha256.Sum256([]byte(err.Error())), fmt.Errorf("read config: %w", err)
			}
			h.Write([]byte(n))
			h.Write(b)
			out = append(out, fileData{n, b})
		}
	}
	var d [sha256.Size]byte
	copy(d[:], h.Sum(nil))
	return out, d, nil
}

func (s *fileSource) apply(files []fileData) error {
	objs := &local.Objects{}
	for _, f := range files {
		if err := objs.Decode(f.name, bytes.Clone(f.data)); err != nil {
			return err
		}
	}
	res, err := local.Compile(objs, local.Options{
		TrustDomain: s.cfg.TrustDomain, DomainSuffix: s.cfg.DomainSuffix, ClusterID: s.cfg.ClusterID, Network: s.cfg.Network,
	})
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		s.log.Warn("configuration warning", "warning", w)
	}
	s.store.Replace(&res.Snapshot)
	wl, svc, pol := s.store.Counts()
	s.metrics.StateObjects.WithLabelValues("workload").Set(float64(wl))
	s.metrics.StateObjects.WithLabelValues("service").Set(float64(svc))
	s.metrics.StateObjects.WithLabelValues("policy").Set(float64(pol))
	s.metrics.ConfigReloads.WithLabelValues("applied").Inc()
	s.log.Info("configuration applied", "workloads", wl, "services", svc, "policies", pol)
	return nil
}
