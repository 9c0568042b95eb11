package dnsproxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// requestLabels are the labels of the istio_dns_* metrics, in order.
var requestLabels = []string{"request_query_type", "request_protocol", "source_workload", "source_workload_namespace"}

type metricSet struct {
	requests, upstreamRequests, upstreamFailures *prometheus.CounterVec
	upstreamDuration                             *prometheus.HistogramVec
	responses, dropped                           *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metricSet, error) {
	m := &metricSet{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_dns_requests_total",
			Help: "DNS queries the proxy received (with a parsable question)"}, requestLabels),
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_dns_upstream_requests_total",
			Help: "DNS queries forwarded to an upstream resolver (each attempt)"}, requestLabels),
		upstreamFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_dns_upstream_failures_total",
			Help: "Forwarded DNS queries that got no reply from an upstream (each attempt)"}, requestLabels),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_dns_upstream_request_duration_seconds",
			Help:    "Duration of an exchange with an upstream resolver",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}}, requestLabels),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_dns_responses_total",
			Help: "DNS replies sent, by response code and by who answered (mesh, upstream, proxy)"}, []string{"rcode", "answered_by"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ambit_dns_dropped_total",
			Help: "DNS messages dropped without a reply, by reason (malformed, oversize, response, overload, source_overload, unknown_client)"}, []string{"reason"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.upstreamRequests, m.upstreamFailures, m.upstreamDuration, m.responses, m.dropped} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register dns metrics: %w", err)
		}
	}
	return m, nil
}
