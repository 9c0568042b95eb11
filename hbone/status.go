package hbone

import "fmt"

// FlagError is a refused or failed CONNECT as a handler reports it: the HTTP status the server answers
// (its StatusError, found by errors.As like any *StatusError) and the response flag telemetry records
// for the connection (DENY, CONNECT, ...), after ztunnel's InboundFlagError. The flag is a plain string
// so that this package stays protocol only; proxy/metrics defines the values.
type FlagError struct {
	StatusError
	Flag string
}

// NewFlagError returns a FlagError with status code, response flag and the formatted cause.
func NewFlagError(code int, flag string, format string, args ...any) *FlagError {
	return &FlagError{StatusError: StatusError{Code: code, Err: fmt.Errorf(format, args...)}, Flag: flag}
}

// Unwrap returns the status, whose Unwrap returns the cause.
func (e *FlagError) Unwrap() error { return &e.StatusError }
