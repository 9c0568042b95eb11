package admin

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/admin/dump"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
)

// Options are the sources the admin handler reads. Every field is optional; a missing source gives an
// empty section or leaves its endpoint unregistered, as noted.
type Options struct {
	// Store is the agent's state: workloads, services and policies.
	Store *state.Store
	// Certificates returns the managed identities (identity.Manager.Snapshot).
	Certificates func() []identity.Status
	// Connections returns the live connections (connmgr.Manager.Snapshot).
	Connections func() []*connmgr.Conn
	// Level is the default log level, changed by /logging (unset: /logging is not served).
	Level *slog.LevelVar
	// Loggers are further named levels /logging may change, such as "access".
	Loggers map[string]*slog.LevelVar
	// Registry, when set, is also served at /metrics and /stats/prometheus, as Envoy's admin port does.
	Registry *prometheus.Registry
	// Ready, when set, is also served at /healthz/ready.
	Ready func() (ready bool, pending []string)
	// Version is reported in the dump (BuildInfoFromBinary fills it).
	Version dump.BuildInfo
	// Config is the effective configuration reported in the dump. It must not hold secrets.
	Config any
	// Quit starts a graceful shutdown; POST /quitquitquit calls it (unset: not served). It must return
	// promptly (cancel a context, do not wait for the shutdown): the admin server is drained too.
	Quit func()
	// NodeName is the node the agent serves; its captured workloads appear in workloadState.
	NodeName string
	// Logger receives request failures; nil discards.
	Logger *slog.Logger
}

// loggingHelp is appended to /logging errors, after ztunnel's help text.
const loggingHelp = `
usage: POST /logging                               (list current levels)
usage: POST /logging?level=<level>                 (change the default level)
usage: POST /logging?level=<logger>:<level>,...    (change named loggers' levels)
usage: POST /logging?reset                         (restore the levels the agent started with)

hint: level: error|warn|info|debug|trace|off
`

// adminHandler serves the admin API.
type adminHandler struct {
	o   Options
	log *slog.Logger
	mux *http.ServeMux
	// initial holds each logger's level at construction, for reset; "" is the default logger.
	initial map[string]slog.Level

	mu sync.Mutex // serialises level changes so that a multi-logger change is not interleaved
}

var _ http.Handler = (*adminHandler)(nil)

// NewAdminHandler returns the handler for the admin listener (localhost:15000):
//
//	GET  /config_dump          the dump (package dump), JSON
//	GET  /connections          live connections, JSON list of dump.Connection
//	GET  /logging              current levels
//	POST /logging?level=...    change levels (Envoy/ztunnel syntax); ?reset restores the initial levels
//	POST /quitquitquit         graceful shutdown (calls Options.Quit)
//	     /debug/pprof/...      Go profiles (net/http/pprof)
//	GET  /metrics, /stats/prometheus, /healthz/ready   when Registry and Ready are set
//	GET  /                     index of the above
//
// Other methods on these paths get 405. The handler must only be served on a loopback address: it
// exposes profiles and shutdown.
func NewAdminHandler(o Options) http.Handler {
	h := &adminHandler{o: o, log: o.Logger, mux: http.NewServeMux(), initial: map[string]slog.Level{}}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.mux.HandleFunc("GET /{$}", h.index)
	h.mux.HandleFunc("GET /config_dump", h.configDump)
	h.mux.HandleFunc("GET /connections", h.connections)
	if o.Level != nil {
		h.initial[""] = o.Level.Level()
		for name, lv := range o.Loggers {
			h.initial[name] = lv.Level()
		}
		h.mux.HandleFunc("GET /logging", h.listLevels)
		h.mux.HandleFunc("POST /logging", h.logging)
	}
	if o.Quit != nil {
		h.mux.HandleFunc("POST /quitquitquit", h.quit)
	}
	h.mux.HandleFunc("/debug/pprof/", pprof.Index)
	h.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	h.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	h.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	h.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	if o.Registry != nil {
		registerMetrics(h.mux, o.Registry)
	}
	if o.Ready != nil {
		h.mux.Handle("GET /healthz/ready", NewReadinessHandler(o.Ready))
	}
	return h
}

func (h *adminHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *adminHandler) index(w http.ResponseWriter, _ *http.Request) {
	var b strings.Builder
	b.WriteString("Ambit node agent admin API\n\n")
	row := func(path, desc string) { fmt.Fprintf(&b, "  %-22s %s\n", path, desc) }
	row("config_dump", "workloads, services, policies, certificates (no keys) and local connections")
	row("connections", "live connections")
	if h.o.Level != nil {
		row("logging", "GET: current levels; POST ?level=<spec> or ?reset: change them")
	}
	if h.o.Quit != nil {
		row("quitquitquit", "POST: drain and shut down")
	}
	row("debug/pprof/", "Go profiles")
	if h.o.Registry != nil {
		row("stats/prometheus", "Prometheus metrics (also /metrics)")
	}
	if h.o.Ready != nil {
		row("healthz/ready", "readiness")
	}
	plain(w, http.StatusOK, b.String())
}

func (h *adminHandler) configDump(w http.ResponseWriter, _ *http.Request) {
	h.writeJSON(w, BuildConfigDump(&h.o))
}

func (h *adminHandler) connections(w http.ResponseWriter, _ *http.Request) {
	var conns []*connmgr.Conn
	if h.o.Connections != nil {
		conns = h.o.Connections()
	}
	h.writeJSON(w, ConvertConnections(conns, time.Now()))
}

func (h *adminHandler) writeJSON(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		h.log.Error("encode admin response", "error", err)
		plain(w, http.StatusInternalServerError, "encode response: "+err.Error()+"\n")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}

func (h *adminHandler) listLevels(w http.ResponseWriter, _ *http.Request) {
	plain(w, http.StatusOK, "current log level is "+h.currentLevels()+"\n")
}

// currentLevels formats the levels as "<default>[,<logger>=<level>...]", loggers sorted.
func (h *adminHandler) currentLevels() string {
	s := LevelName(h.o.Level.Level())
	for _, name := range slices.Sorted(maps.Keys(h.o.Loggers)) {
		s += "," + name + "=" + LevelName(h.o.Loggers[name].Level())
	}
	return s
}

// logging changes levels like ztunnel's POST /logging: ?reset restores the initial levels, then
// ?level=<spec> applies; with neither it lists the current levels.
func (h *adminHandler) logging(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	spec, reset := q.Get("level"), q.Has("reset")
	var change LevelChange
	if spec != "" {
		var err error
		if change, err = ParseLevelSpec(spec, slices.Sorted(maps.Keys(h.o.Loggers))); err != nil {
			plain(w, http.StatusBadRequest, fmt.Sprintf("Invalid level provided: %s (%v)\n%s", spec, err, loggingHelp))
			return
		}
	}
	h.mu.Lock()
	if reset {
		h.o.Level.Set(h.initial[""])
		for name, lv := range h.o.Loggers {
			lv.Set(h.initial[name])
		}
	}
	for name, l := range change {
		if name == "" {
			h.o.Level.Set(l)
		} else {
			h.o.Loggers[name].Set(l)
		}
	}
	h.mu.Unlock()
	if reset || spec != "" {
		h.log.Info("log levels changed", "levels", h.currentLevels())
	}
	h.listLevels(w, r)
}

func (h *adminHandler) quit(w http.ResponseWriter, _ *http.Request) {
	plain(w, http.StatusOK, "shutdown now\n")
	_ = http.NewResponseController(w).Flush()
	h.o.Quit()
}

func plain(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}
