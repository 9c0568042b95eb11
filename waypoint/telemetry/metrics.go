package telemetry

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// Reporter is the reporter label of every waypoint metric.
const Reporter = "waypoint"

// requestLabels are Istio's standard labels of the HTTP metrics, in order.
var requestLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// Metrics are the HTTP collectors.
type Metrics struct {
	Requests      *prometheus.CounterVec
	Duration      *prometheus.HistogramVec
	RequestBytes  *prometheus.HistogramVec
	ResponseBytes *prometheus.HistogramVec

	mu     sync.RWMutex
	series map[Labels]*series // guarded by mu; resolved children per label set (bounded by maxSeriesCache)
}

// series are the children of the four collectors for one label set.
type series struct {
	requests              prometheus.Counter
	duration, reqB, respB prometheus.Observer
}

// maxSeriesCache bounds the per-label-set cache; it is cleared when full (workload churn).
const maxSeriesCache = 4096

// NewMetrics registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	bytesBuckets := prometheus.ExponentialBuckets(1, 10, 9)
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total",
			Help: "Total requests handled by the waypoint"}, requestLabels),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds",
			Help:    "Request duration in milliseconds",
			Buckets: []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}},
			requestLabels),
		RequestBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes",
			Help: "Request sizes (headers and body) in bytes", Buckets: bytesBuckets}, requestLabels),
		ResponseBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes",
			Help: "Response sizes (headers and body) in bytes", Buckets: bytesBuckets}, requestLabels),
	}
	for _, c := range []prometheus.Collector{m.Requests, m.Duration, m.RequestBytes, m.ResponseBytes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register HTTP metrics: %w", err)
		}
	}
	return m, nil
}

// Labels describe one request.
type Labels struct {
	Source          *state.Workload
	SourcePrincipal string
	Destination     *state.Workload
	DestPrincipal   string
	Service         *state.Service
	// Protocol is "http" or "grpc".
	Protocol      string
	Code          int
	GRPCStatus    string
	ResponseFlags string
	MutualTLS     bool
}

func u(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Values returns the label values in requestLabels order.
func (l *Labels) Values() []string {
	v := make([]string, 0, len(requestLabels))
	v = append(v, Reporter)
	if w := l.Source; w != nil {
		v = append(v, u(w.WorkloadName), u(w.Namespace), u(l.SourcePrincipal), u(w.CanonicalName), u(w.CanonicalRevision),
			u(w.CanonicalName), u(w.CanonicalRevision), u(w.ClusterID))
	} else {
		v = append(v, "unknown", "unknown", u(l.SourcePrincipal), "unknown", "unknown", "unknown", "unknown", "unknown")
	}
	w := l.Destination
	if w != nil {
		v = append(v, u(w.WorkloadName), u(w.Namespace), u(l.DestPrincipal), u(w.CanonicalName), u(w.CanonicalRevision))
	} else {
		v = append(v, "unknown", "unknown", u(l.DestPrincipal), "unknown", "unknown")
	}
	if l.Service != nil {
		v = append(v, l.Service.Hostname, l.Service.Name, l.Service.Namespace)
	} else {
		v = append(v, "unknown", "unknown", "unknown")
	}
	if w != nil {
		v = append(v, u(w.CanonicalName), u(w.CanonicalRevision), u(w.ClusterID))
	} else {
		v = append(v, "unknown", "unknown", "unknown")
	}
	policy := "unknown"
	if l.MutualTLS {
		policy = "mutual_tls"
	}
	code := "0"
	if l.Code != 0 {
		code = strconv.Itoa(l.Code)
	}
	return append(v, u(l.Protocol), code, u(l.GRPCStatus), u(l.ResponseFlags), policy)
}

// Observe records one finished request.
func (m *Metrics) Observe(l *Labels, d time.Duration, reqBytes, respBytes int64) {
	m.mu.RLock()
	s := m.series[*l]
	m.mu.RUnlock()
	if s == nil {
		vals := l.Values()
		s = &series{requests: m.Requests.WithLabelValues(vals...), duration: m.Duration.WithLabelValues(vals...),
			reqB: m.RequestBytes.WithLabelValues(vals...), respB: m.ResponseBytes.WithLabelValues(vals...)}
		m.mu.Lock()
		if m.series == nil || len(m.series) >= maxSeriesCache {
			m.series = map[Labels]*series{}
		}
		m.series[*l] = s
		m.mu.Unlock()
	}
	s.requests.Inc()
	s.duration.Observe(float64(d.Microseconds()) / 1000)
	s.reqB.Observe(float64(reqBytes))
	s.respB.Observe(float64(respBytes))
}

// TracingOptions configure tracing.
type TracingOptions struct {
	// Endpoint is the OTLP/HTTP collector ("host:port" or a URL); empty exports nothing (trace context
	// is still propagated).
	Endpoint string
	// Sampling is the fraction of new traces sampled (0-1); parent decisions are honoured.
	Sampling float64
	// ServiceName is the resource's service.name.
	ServiceName string
}

// Tracing is a tracer provider and the propagators (W3C trace context and baggage, B3 single and multi).
type Tracing struct {
	Provider *sdktrace.TracerProvider
	Tracer   trace.Tracer
	// Propagator reads and writes W3C trace context and B3; W3C writes only W3C trace context.
	Propagator propagation.TextMapPropagator
	W3C        propagation.TextMapPropagator
}

// NewTracing builds the provider; Shutdown flushes it.
func NewTracing(ctx context.Context, o TracingOptions) (*Tracing, error) {
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.Sampling))),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(o.ServiceName))),
	}
	if o.Endpoint != "" {
		eo := []otlptracehttp.Option{otlptracehttp.WithInsecure()}
		if len(o.Endpoint) > 7 && (o.Endpoint[:7] == "http://" || o.Endpoint[:8] == "https://") {
			eo = []otlptracehttp.Option{otlptracehttp.WithEndpointURL(o.Endpoint)}
		} else {
			eo = append(eo, otlptracehttp.WithEndpoint(o.Endpoint))
		}
		exp, err := otlptracehttp.New(ctx, eo...)
		if err != nil {
			return nil, fmt.Errorf("create OTLP exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	return &Tracing{
		Provider: tp,
		Tracer:   tp.Tracer("github.com/ambit-mesh/ambit/waypoint/engine"),
		Propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{},
			b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader))),
		W3C: propagation.TraceContext{},
	}, nil
}

// Shutdown flushes pending spans.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if err := t.Provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("shut down tracing: %w", err)
	}
	return nil
}
