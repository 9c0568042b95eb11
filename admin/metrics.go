package admin

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewMetricsHandler returns the handler for the metrics listener (:15020): reg in the Prometheus text
// format at GET /metrics and at GET /stats/prometheus (the path Istio's scrape annotations use).
func NewMetricsHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	registerMetrics(mux, reg)
	return mux
}

func registerMetrics(mux *http.ServeMux, reg *prometheus.Registry) {
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	mux.Handle("GET /metrics", h)
	mux.Handle("GET /stats/prometheus", h)
}
