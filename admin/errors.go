package admin

import "errors"

// Sentinel errors; test them with errors.Is.
var (
	// ErrInvalidLevel reports a log level name or spec that cannot be parsed.
	ErrInvalidLevel = errors.New("invalid log level")
	// ErrUnknownLogger reports a level spec that names a logger the agent does not have.
	ErrUnknownLogger = errors.New("unknown logger")
)
