package redirect

import "errors"

var (
	// ErrNotSupported reports that the kernel or the machine lacks something a mode needs. Errors that wrap it
	// name the missing feature.
	ErrNotSupported = errors.New("not supported")
	// ErrClosed is returned by the methods of a closed Redirector.
	ErrClosed = errors.New("redirector closed")
	// ErrInvalidPod reports a Pod that cannot be enrolled (no UID, no addresses, UID too long).
	ErrInvalidPod = errors.New("invalid pod")
	// ErrNotLocal reports a pod address that is not routed to a local interface of the node namespace.
	ErrNotLocal = errors.New("pod address not on a local interface")
)
