package engine

import "errors"

// Errors reported through the proxy's error handler; each maps to a status and response flag.
var (
	errNoBackend  = errors.New("no backend service")
	errTimeout    = errors.New("upstream request timeout")
	errStreamIdle = errors.New("stream idle timeout")
	// errUnexpectedUpgrade: the backend answered 101 to a request that asked for no upgrade the
	// engine allows (an h2c upgrade it stripped, for one): never relayed.
	errUnexpectedUpgrade = errors.New("upstream switched protocols without an allowed upgrade")
)
