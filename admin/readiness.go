package admin

import (
	"net/http"
	"strings"
)

// NewReadinessHandler returns the handler for the readiness listener (:15021). GET /healthz/ready calls
// ready and answers 200 "ready" or, like ztunnel, 500 "not ready, pending: <a>, <b>".
func NewReadinessHandler(ready func() (bool, []string)) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if ok, pending := ready(); !ok {
			plain(w, http.StatusInternalServerError, "not ready, pending: "+strings.Join(pending, ", ")+"\n")
			return
		}
		plain(w, http.StatusOK, "ready\n")
	})
	return mux
}
