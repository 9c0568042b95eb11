// Package telemetry records the L7 waypoint's Istio standard HTTP metrics (istio_requests_total,
// istio_request_duration_milliseconds, istio_request_bytes, istio_response_bytes, reporter="waypoint"),
// and sets up OpenTelemetry tracing: W3C traceparent and B3 propagation, spans exported over OTLP/HTTP
// to a configured collector.
//
// It must not import the engine, agent/ or proxy/ (the TCP metrics are proxy/metrics').
package telemetry
