package xdsclient

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of Options' reconnect backoff (ztunnel's).
const (
	DefaultInitialBackoff = 10 * time.Millisecond
	DefaultMaxBackoff     = 15 * time.Second
)

// benign reports whether a stream ended in a way that warrants an immediate reconnect rather than backoff:
// a clean end of stream, or the terminations istiod causes on purpose (connection rebalancing, max
// connection age, graceful shutdown). It mirrors ztunnel's classification.
func benign(err error) bool {
	if err == nil || errors.Is(err, io.EOF) {
		return true
	}
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unknown, codes.Canceled, codes.DeadlineExceeded:
		return true
	case codes.Unavailable:
		msg := st.Message()
		return strings.Contains(msg, "transport is closing") || strings.Contains(msg, "received prior goaway") ||
			strings.Contains(msg, "server closed the stream without sending trailers")
	}
	return false
}

// nextBackoff returns the delay before reconnect attempt failures+1 (failures ≥ 1): initial doubled per
// consecutive failure, capped at max, with "equal jitter" (uniform in [d/2, d]) so that many node agents
// restarted together do not reconnect in lockstep. A benign termination waits only the initial delay.
func nextBackoff(initial, maxDelay time.Duration, failures int, benignEnd bool, rnd func(int64) int64) time.Duration {
	d := initial
	if !benignEnd {
		for i := 1; i < failures && d < maxDelay; i++ {
			d *= 2
		}
	}
	d = min(d, maxDelay)
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + time.Duration(rnd(int64(half)+1))
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func randInt64N(n int64) int64 { return rand.Int64N(n) }
