package upstream

import "errors"

// Errors of Admit and Pick.
var (
	// ErrOverflow means a connection pool limit was hit (503, response flag UO).
	ErrOverflow = errors.New("upstream overflow")
	// ErrNoHealthy means no endpoint can take the request (503, response flag UH).
	ErrNoHealthy = errors.New("no healthy upstream")
)
