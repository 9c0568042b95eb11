package hbone

import (
	"errors"
	"fmt"
	"net/http"

	"golang.org/x/net/http2"
)

var (
	// ErrServerClosed is returned by Server.Serve after Shutdown or Close.
	ErrServerClosed = errors.New("hbone: server closed")
	// ErrPoolClosed is returned by Pool.Dial after Pool.Close.
	ErrPoolClosed = errors.New("hbone: pool closed")
	// ErrBadAuthority reports an :authority that is neither ip:port nor host:port.
	ErrBadAuthority = errors.New("hbone: bad authority")
	// ErrConnClosed reports use of a stream whose HTTP/2 connection has closed.
	ErrConnClosed = errors.New("hbone: connection closed")
	// ErrKeepaliveTimeout reports a connection closed because the peer stopped answering PINGs.
	ErrKeepaliveTimeout = errors.New("hbone: keepalive timeout")
	// ErrGoAway reports a stream the peer refused because the connection is going away. Pool.Dial retries
	// such streams on another connection before returning it.
	ErrGoAway = errors.New("hbone: connection going away")
	// ErrPeerIdentity reports a peer certificate whose SPIFFE identity is not accepted.
	ErrPeerIdentity = errors.New("hbone: peer identity not accepted")
	// ErrNotH2 reports a TLS peer that did not negotiate ALPN "h2" or did not speak HTTP/2.
	ErrNotH2 = errors.New("hbone: peer does not speak h2")
	// ErrAlreadyAccepted is returned by a second Request.Accept.
	ErrAlreadyAccepted = errors.New("hbone: stream already accepted")
	// ErrNotAccepted reports a handler that returned nil without calling Request.Accept.
	ErrNotAccepted = errors.New("hbone: handler returned without accepting")
	// ErrWriteAfterClose reports a Write after CloseWrite or Close.
	ErrWriteAfterClose = errors.New("hbone: write after close")
	// ErrStreamIdleTimeout reports a stream reset because no data moved on it for its idle timeout.
	ErrStreamIdleTimeout = errors.New("hbone: stream idle timeout")
	// ErrHandshakeTimeout reports a connection whose TLS handshake and HTTP/2 preface did not complete
	// in time.
	ErrHandshakeTimeout = errors.New("hbone: handshake timeout")
	// errRefused marks a stream the peer never processed (REFUSED_STREAM or above a GOAWAY's last
	// stream id); Pool.Dial retries it. It wraps ErrGoAway for callers.
	errRefused = fmt.Errorf("stream refused: %w", ErrGoAway)
)

// StatusError is an HTTP status with its cause. A Handler returns it to choose the status the server
// answers a refused CONNECT with (400, 401, 403, 503...; any other error means 503). Pool.Dial returns
// it when the server answers a status other than 200, with Err describing the response.
type StatusError struct {
	Code int
	Err  error
}

// Error implements error.
func (e *StatusError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("hbone: status %d %s", e.Code, http.StatusText(e.Code))
	}
	return fmt.Sprintf("hbone: status %d %s: %v", e.Code, http.StatusText(e.Code), e.Err)
}

// Unwrap returns the cause.
func (e *StatusError) Unwrap() error { return e.Err }

// ResetError reports a stream ended by RST_STREAM with a code other than NO_ERROR or CANCEL (those two
// read as a clean io.EOF), or a stream reset locally because of a protocol error.
type ResetError struct {
	Code   http2.ErrCode
	Remote bool // sent by the peer rather than by this side
}

// Error implements error.
func (e *ResetError) Error() string {
	if e.Remote {
		return "hbone: stream reset by peer: " + e.Code.String()
	}
	return "hbone: stream reset: " + e.Code.String()
}

// statusFor returns the HTTP status a handler error maps to: the code of a *StatusError in err's chain if
// it is a 4xx or 5xx, else 503.
func statusFor(err error) int {
	var se *StatusError
	if errors.As(err, &se) && se.Code >= 400 && se.Code <= 599 {
		return se.Code
	}
	return http.StatusServiceUnavailable
}
