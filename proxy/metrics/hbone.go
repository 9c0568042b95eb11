package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/hbone"
)

// HBONE metrics: the counters and gauges of hbone.Server.Stats and hbone.Pool.Stats, read at scrape time
// (hbone keeps plain atomics and exports snapshots; nothing here runs on the data path). Server metrics
// carry the label server (the agent's "inbound", the waypoint's "waypoint"), pool metrics the label pool
// (the agent's "outbound", the waypoint's "l4" and "l7"); the flood and protocol-error counters are
// shared and tell the two apart by side ("server" or "client") and name.
//
//	ambit_hbone_server_connections                    gauge    open connections, handshaking ones included
//	ambit_hbone_server_streams, _handlers             gauge    open streams, running handlers
//	ambit_hbone_server_connections_accepted_total     counter  connections accepted (refused ones included)
//	ambit_hbone_server_connections_refused_total      counter  closed at accept: the connection cap was reached
//	ambit_hbone_server_handshake_timeouts_total       counter  TLS + HTTP/2 preface not done in time
//	ambit_hbone_server_handshake_errors_total         counter  failed TLS handshake, ALPN or preface
//	ambit_hbone_server_idle_timeouts_total            counter  connections closed without streams for the idle timeout
//	ambit_hbone_client_connections, _pooled_connections, _streams  gauge  the pool's connections and streams
//	ambit_hbone_stream_idle_timeouts_total{side,name} counter  streams reset after their idle timeout
//	ambit_hbone_protocol_errors_total{side,name}      counter  connections closed with GOAWAY for a protocol error
//	ambit_hbone_floods_total{side,name,kind}          counter  connections closed with GOAWAY ENHANCE_YOUR_CALM, by limit
var (
	hboneServerConns = prometheus.NewDesc("ambit_hbone_server_connections",
		"Open HBONE server connections, handshaking ones included", []string{"server"}, nil)
	hboneServerStreams = prometheus.NewDesc("ambit_hbone_server_streams",
		"Open HBONE server streams", []string{"server"}, nil)
	hboneServerHandlers = prometheus.NewDesc("ambit_hbone_server_handlers",
		"Running HBONE stream handlers, those of streams already reset included", []string{"server"}, nil)
	hboneAccepted = prometheus.NewDesc("ambit_hbone_server_connections_accepted_total",
		"HBONE connections accepted, refused ones included", []string{"server"}, nil)
	hboneRefused = prometheus.NewDesc("ambit_hbone_server_connections_refused_total",
		"HBONE connections closed at accept because the connection cap was reached", []string{"server"}, nil)
	hboneHandshakeTimeouts = prometheus.NewDesc("ambit_hbone_server_handshake_timeouts_total",
		"HBONE connections closed because TLS and the HTTP/2 preface did not complete in time", []string{"server"}, nil)
	hboneHandshakeErrors = prometheus.NewDesc("ambit_hbone_server_handshake_errors_total",
		"HBONE connections closed for a failed TLS handshake, ALPN or HTTP/2 preface", []string{"server"}, nil)
	hboneIdleTimeouts = prometheus.NewDesc("ambit_hbone_server_idle_timeouts_total",
		"HBONE connections closed after the idle timeout without streams", []string{"server"}, nil)
	hboneClientConns = prometheus.NewDesc("ambit_hbone_client_connections",
		"Live HBONE client connections, pooled or draining", []string{"pool"}, nil)
	hboneClientPooled = prometheus.NewDesc("ambit_hbone_client_pooled_connections",
		"HBONE client connections that may take new streams", []string{"pool"}, nil)
	hboneClientStreams = prometheus.NewDesc("ambit_hbone_client_streams",
		"Open HBONE client streams", []string{"pool"}, nil)
	hboneStreamIdle = prometheus.NewDesc("ambit_hbone_stream_idle_timeouts_total",
		"HBONE streams reset after their idle timeout", []string{"side", "name"}, nil)
	hboneProtocolErrors = prometheus.NewDesc("ambit_hbone_protocol_errors_total",
		"HBONE connections closed with GOAWAY for a protocol error other than a flood", []string{"side", "name"}, nil)
	hboneFloods = prometheus.NewDesc("ambit_hbone_floods_total",
		"HBONE connections closed with GOAWAY ENHANCE_YOUR_CALM for exceeding a flood limit, by limit",
		[]string{"side", "name", "kind"}, nil)
)

// hboneCollector reads the Stats of HBONE servers and pools at scrape time.
type hboneCollector struct {
	servers map[string]*hbone.Server
	pools   map[string]*hbone.Pool
}

// RegisterHBONE exports the Stats of servers and pools, keyed by the name their metrics carry. Call it
// once per process, before serving /metrics.
func (m *Metrics) RegisterHBONE(servers map[string]*hbone.Server, pools map[string]*hbone.Pool) {
	m.Registry.MustRegister(&hboneCollector{servers: servers, pools: pools})
}

func (c *hboneCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{hboneServerConns, hboneServerStreams, hboneServerHandlers, hboneAccepted,
		hboneRefused, hboneHandshakeTimeouts, hboneHandshakeErrors, hboneIdleTimeouts, hboneClientConns,
		hboneClientPooled, hboneClientStreams, hboneStreamIdle, hboneProtocolErrors, hboneFloods} {
		ch <- d
	}
}

func (c *hboneCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	count := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for name, s := range c.servers {
		st := s.Stats()
		gauge(hboneServerConns, st.Conns, name)
		gauge(hboneServerStreams, st.Streams, name)
		gauge(hboneServerHandlers, st.Handlers, name)
		count(hboneAccepted, st.ConnsAccepted, name)
		count(hboneRefused, st.ConnsRejected, name)
		count(hboneHandshakeTimeouts, st.HandshakeTimeouts, name)
		count(hboneHandshakeErrors, st.HandshakeErrors, name)
		count(hboneIdleTimeouts, st.IdleTimeouts, name)
		count(hboneStreamIdle, st.StreamIdleTimeouts, "server", name)
		count(hboneProtocolErrors, st.ProtocolErrors, "server", name)
		for _, f := range floodKinds(st.Floods) {
			count(hboneFloods, f.n, "server", name, f.kind)
		}
	}
	for name, p := range c.pools {
		st := p.Stats()
		gauge(hboneClientConns, st.Conns, name)
		gauge(hboneClientPooled, st.Pooled, name)
		gauge(hboneClientStreams, st.Streams, name)
		count(hboneStreamIdle, st.StreamIdleTimeouts, "client", name)
		count(hboneProtocolErrors, st.ProtocolErrors, "client", name)
		for _, f := range floodKinds(st.Floods) {
			count(hboneFloods, f.n, "client", name, f.kind)
		}
	}
}

type floodCount struct {
	kind string
	n    uint64
}

// floodKinds lists f by the kind label (names after Envoy's *_flood stats where it has one).
func floodKinds(f hbone.FloodStats) [8]floodCount {
	return [8]floodCount{
		{"rapid_reset", f.RapidReset}, {"control_queue", f.ControlQueue}, {"continuation", f.Continuation},
		{"empty_frames", f.EmptyFrames}, {"window_update", f.WindowUpdate}, {"priority", f.Priority},
		{"settings", f.Settings}, {"resets", f.Resets},
	}
}
