package xdsclient

import "errors"

// Sentinel errors; test them with errors.Is.
var (
	// ErrClosed is returned by a Client after Close.
	ErrClosed = errors.New("xdsclient: closed")
	// ErrUnknownType reports a type URL the client has no subscription for.
	ErrUnknownType = errors.New("xdsclient: unknown type url")
	// ErrNotOnDemand reports Subscribe, Forget or Fetch on a wildcard subscription.
	ErrNotOnDemand = errors.New("xdsclient: subscription is not on-demand")
	// ErrTooManyNames reports a Subscribe or Fetch that would take an on-demand subscription past
	// Options.MaxOnDemandNames.
	ErrTooManyNames = errors.New("xdsclient: too many on-demand names")
	// ErrRunning reports a second concurrent Run.
	ErrRunning = errors.New("xdsclient: already running")
)
