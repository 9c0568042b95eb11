package engine

import "errors"

// Errors reported through the proxy's error handler; each maps to a status and response flag.
var (
	errNoBackend  = errors.New("no backend service")
	errTimeout    = errors.New("upstream request timeout")
	errStreamIdle = errors.New("stream idle timeout")
)
