// Package metrics defines Ambit's Prometheus metrics: Istio's standard TCP metrics with their names and
// labels (so dashboards built for ztunnel work unchanged) and Ambit's own gauges, all on one registry.
//
// Core (stable, Istio names): istio_tcp_connections_opened_total, istio_tcp_connections_closed_total,
// istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total, istio_build.
// Unstable: istio_tcp_connections_failed_total, istio_tcp_sockets_open, and every ambit_* metric.
//
// A connection is accounted once, from one ConnectionResult, by the Recorder both processes use: its
// metrics and its access-log line come from the same values, and FlagFor is the one place a failure
// becomes a DENY or CONNECT response flag.
//
// It must not import agent/ or waypoint/ (the waypoint's HTTP metrics are waypoint/telemetry's).
package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// Reporter values of the reporter label.
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
)

// Response flags Ambit reports (ztunnel's set).
const (
	FlagNone     = "-"
	FlagDeny     = "DENY"
	FlagConnect  = "CONNECT"
	FlagTLS      = "TLS_FAILURE"
	FlagIdentity = "IDENTITY_ERROR"
)

// tcpLabels are the labels of the istio_tcp_* metrics, in order.
var tcpLabels = []string{
	"reporter",
	"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_canonical_service", "destination_canonical_revision",
	"destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_cluster", "request_protocol", "response_flags", "connection_security_policy",
	"source_region", "source_zone", "destination_region", "destination_zone",
}

// Metrics holds every collector. Create it with New; it is safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	Opened, Closed, Failed *prometheus.CounterVec
	Sent, Received         *prometheus.CounterVec
	SocketsOpen            *prometheus.GaugeVec

	ActiveConnections *prometheus.GaugeVec
	StateObjects      *prometheus.GaugeVec
	ConfigReloads     *prometheus.CounterVec
	EnrolledPods      prometheus.Gauge
	PolicyCloses      prometheus.Counter

	series seriesCache
}

// tcpSeries are the istio_tcp_* counters a completed connection adds to, for one label set.
type tcpSeries struct{ opened, closed, received, sent prometheus.Counter }

// seriesCache remembers the counters of recent label sets. Resolving a label set costs building ~25 values and,
// per metric, hashing and UTF-8-checking each of them; a connection adds to four metrics, and most connections
// repeat the label set of an earlier one (same workloads, same flags). Series are never deleted, so a cached
// counter stays the one registered. Bounded: full, it starts over.
type seriesCache struct {
	mu sync.Mutex
	m  map[ConnLabels]*tcpSeries
}

const maxCachedSeries = 1024

// tcp returns the counters of l's label set.
func (m *Metrics) tcp(l *ConnLabels) *tcpSeries {
	c := &m.series
	c.mu.Lock()
	s, ok := c.m[*l]
	c.mu.Unlock()
	if ok {
		return s
	}
	vals := l.Values()
	s = &tcpSeries{opened: m.Opened.WithLabelValues(vals...), closed: m.Closed.WithLabelValues(vals...),
		received: m.Received.WithLabelValues(vals...), sent: m.Sent.WithLabelValues(vals...)}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedSeries {
		c.m = make(map[ConnLabels]*tcpSeries)
	}
	c.m[*l] = s
	c.mu.Unlock()
	return s
}

// New registers every metric, plus Go and process collectors, on a new registry.
func New(version string) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Opened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total",
			Help: "The total number of TCP connections opened"}, tcpLabels),
		Closed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total",
			Help: "The total number of TCP connections closed"}, tcpLabels),
		Failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_failed_total",
			Help: "The total number of TCP connections that failed to establish"}, tcpLabels),
		Sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total",
			Help: "The size of total bytes sent during response in case of a TCP connection"}, tcpLabels),
		Received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total",
			Help: "The size of total bytes received during request in case of a TCP connection"}, tcpLabels),
		SocketsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istio_tcp_sockets_open",
			Help: "The current number of open TCP sockets"}, []string{"reporter"}),
		ActiveConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ambit_connections_active",
			Help: "Connections the agent is relaying now, by direction"}, []string{"direction"}),
		StateObjects: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ambit_state_objects",
			Help: "Objects in the agent's state, by kind"}, []string{"kind"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_config_reloads_total",
			Help: "Configuration loads, by result (applied or rejected)"}, []string{"result"}),
		EnrolledPods: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ambit_enrolled_pods",
			Help: "Pods whose traffic the agent captures"}),
		PolicyCloses: prometheus.NewCounter(prometheus.CounterOpts{Name: "ambit_policy_closed_connections_total",
			Help: "Connections closed because a policy change denies them"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istio_build", Help: "Istio component build info"},
		[]string{"component", "tag"})
	build.WithLabelValues("ztunnel", version).Set(1)
	r.MustRegister(m.Opened, m.Closed, m.Failed, m.Sent, m.Received, m.SocketsOpen, m.ActiveConnections,
		m.StateObjects, m.ConfigReloads, m.EnrolledPods, m.PolicyCloses, build,
		goCollector(), processCollector())
	return m
}

// ConnLabels describe one connection for the istio_tcp_* metrics. Empty values are reported as
// "unknown", as Istio does.
type ConnLabels struct {
	Reporter        string
	Source          *state.Workload
	SourcePrincipal string
	Destination     *state.Workload
	Service         *state.Service
	DestPrincipal   string
	ResponseFlags   string
	MutualTLS       bool
}

// Values returns the label values in tcpLabels order.
func (l *ConnLabels) Values() []string {
	u := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	v := make([]string, 0, len(tcpLabels))
	v = append(v, l.Reporter)
	v = appendWorkload(v, l.Source, u)
	v = append(v, u(l.SourcePrincipal), u(appOf(l.Source)), u(versionOf(l.Source)), u(clusterOf(l.Source)))
	if l.Service != nil {
		v = append(v, l.Service.Hostname, l.Service.Namespace, l.Service.Name)
	} else {
		v = append(v, "unknown", "unknown", "unknown")
	}
	v = appendWorkload(v, l.Destination, u)
	v = append(v, u(l.DestPrincipal), u(appOf(l.Destination)), u(versionOf(l.Destination)), u(clusterOf(l.Destination)))
	policy := "unknown"
	if l.MutualTLS {
		policy = "mutual_tls"
	}
	v = append(v, "tcp", u(l.ResponseFlags), policy)
	v = append(v, u(region(l.Source)), u(zone(l.Source)), u(region(l.Destination)), u(zone(l.Destination)))
	return v
}

func appendWorkload(v []string, w *state.Workload, u func(string) string) []string {
	if w == nil {
		return append(v, "unknown", "unknown", "unknown", "unknown")
	}
	return append(v, u(w.WorkloadName), u(w.CanonicalName), u(w.CanonicalRevision), u(w.Namespace))
}

func appOf(w *state.Workload) string {
	if w == nil {
		return ""
	}
	return w.CanonicalName
}

func versionOf(w *state.Workload) string {
	if w == nil {
		return ""
	}
	return w.CanonicalRevision
}

func clusterOf(w *state.Workload) string {
	if w == nil {
		return ""
	}
	return w.ClusterID
}

func region(w *state.Workload) string {
	if w == nil {
		return ""
	}
	return w.Locality.Region
}

func zone(w *state.Workload) string {
	if w == nil {
		return ""
	}
	return w.Locality.Zone
}

// StateApplied records a configuration version that was applied: the state's object counts and one
// applied reload.
func (m *Metrics) StateApplied(workloads, services, policies int) {
	m.StateObjects.WithLabelValues("workload").Set(float64(workloads))
	m.StateObjects.WithLabelValues("service").Set(float64(services))
	m.StateObjects.WithLabelValues("policy").Set(float64(policies))
	m.ConfigReloads.WithLabelValues("applied").Inc()
}

// goCollector and processCollector are what collectors.NewGoCollector and collectors.NewProcessCollector
// return (those are one-line wrappers of these): package collectors also holds the database/sql and expvar
// collectors, and importing it links database/sql and expvar (whose init publishes /debug/vars) into every
// process (test/arch TestBinaryDependencies).
func goCollector() prometheus.Collector {
	//lint:ignore SA1019 the same collector as collectors.NewGoCollector, without its package's imports.
	return prometheus.NewGoCollector()
}

func processCollector() prometheus.Collector {
	//lint:ignore SA1019 the same collector as collectors.NewProcessCollector, without its package's imports.
	return prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{})
}
