// Package relay copies bytes both ways between two connections with half-close, live byte counters and,
// while a connection is idle, neither a buffer nor a goroutine. A direction whose source is a TCP
// connection or an HBONE stream parks when it has nothing to read: a TCP source is watched by one
// process-wide epoll instance (EPOLLIN|EPOLLRDHUP, one-shot, re-armed after each drain; poller.go), a
// stream by its one-shot readable notification (hbone.Stream.NotifyReadable). On readiness a goroutine
// drains what is there and parks again: TCP to TCP through a kernel pipe (splice(2); a few pipes are
// pooled while relays are registered, closed once every relay has ended), TCP to anything else with
// pooled buffers (1 KiB, then 64 KiB while reads keep filling it) given back before it parks, a
// stream's received chunks as they are (hbone.Stream.WriteAvailable, no buffer of ours). A write that
// blocks keeps its goroutine only while blocked. Start relays this way and returns at once, after one
// read of what a TCP source has received already (relayed on the caller's goroutine: no poller round
// trip nor goroutine for a client's first bytes); Bidi waits for the end. A context that cannot be
// cancelled costs no cancellation hook. Other sources (TLS, anything wrapped) keep a goroutine that reads into a 1 KiB buffer of
// its own, as before.
//
// It imports only hbone (for its streams); never agent/ or waypoint/.
package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/hbone"
)

// Buffer sizes: small while trickling, big while a read fills the buffer. A TCP source gives its buffer
// back after every short read; other sources keep the small one while idle, and the big one until a read
// returns less than an eighth of it (256 KiB measured about 9% less mesh CPU per MB than 64 KiB, but
// would be what such a source holds idle after a burst).
const (
	smallSize = 1 << 10
	bigSize   = 64 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallSize); return &b }}
	bigPool   = sync.Pool{New: func() any { b := make([]byte, bigSize); return &b }}
)

// Counters are live byte counts of a relay; they may be read at any time.
type Counters struct {
	// AToB counts bytes read from a and written to b; BToA the other way.
	AToB, BToA atomic.Int64
}

// closeWriter is implemented by *net.TCPConn, *tls.Conn and HBONE streams.
type closeWriter interface{ CloseWrite() error }

// Bidi relays between a and b until both directions end, then closes both. When one side's reads end
// (EOF), the other side is half-closed so the peer sees the end of stream while the reverse direction
// keeps flowing. Cancelling ctx closes both connections at once (policy change, shutdown). The error is
// the first one that is not a clean end of stream or a consequence of cancellation. It is Start, waited
// for: while the connection is idle, only the caller's goroutine waits.
func Bidi(ctx context.Context, a, b net.Conn, c *Counters) error {
	done := make(chan error, 1)
	Start(ctx, a, b, c, func(err error) { done <- err })
	return <-done
}

// closeHalf half-closes dst after its copy ended with err (or closes it when it cannot half-close) and
// returns the copy's result.
func closeHalf(dst net.Conn, err error) error {
	if cw, ok := dst.(closeWriter); ok {
		if cerr := cw.CloseWrite(); err == nil {
			err = cleanEnd(cerr) // a stream the peer already reset cannot half-close
		}
	} else {
		dst.Close()
	}
	return err
}

// copyData copies src to dst with a buffer of its own (sources that cannot park).
func copyData(dst, src net.Conn, n *atomic.Int64) error {
	small := make([]byte, smallSize)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			bigPool.Put(big)
		}
	}()
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n.Add(int64(nw))
			if werr != nil {
				return cleanEnd(werr)
			}
		}
		if rerr != nil {
			return cleanEnd(rerr)
		}
		switch {
		case nr == len(buf) && big == nil:
			big = bigPool.Get().(*[]byte)
			buf = *big
		case nr < len(buf)/8 && big != nil:
			// Traffic slowed down: give the big buffer back before the next (possibly long) read.
			bigPool.Put(big)
			big, buf = nil, small
		}
	}
}

// cleanEnd maps the ways a connection ends normally to nil: end of stream, a connection closed here, and
// an HBONE stream the peer reset with NO_ERROR or CANCEL (how a peer closes a stream it no longer wants;
// reads see it as io.EOF, writes as *hbone.ResetError).
func cleanEnd(err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	var re *hbone.ResetError
	if errors.As(err, &re) && re.Remote && (re.Code == http2.ErrCodeNo || re.Code == http2.ErrCodeCancel) {
		return nil
	}
	return err
}
