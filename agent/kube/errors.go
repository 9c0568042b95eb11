package kube

import "errors"

// ErrInvalidOptions reports a missing or invalid Options field.
var ErrInvalidOptions = errors.New("invalid kube watcher options")
