package hbone

// flood.go: limits on what a peer can make a connection do without making progress, in both roles.
//
// Invariants:
//   - Every counter here is touched by readLoop only (the atomics opened and dataUnits aside, which
//     writers and openStream add to), so the checks take no lock.
//   - Exceeding a limit is a connection error: readLoop stops reading, sends GOAWAY (ENHANCE_YOUR_CALM for
//     floods, PROTOCOL_ERROR for a header block far above the advertised size, as x/net/http2) and closes
//     after the GOAWAY is out (closeAfterGoAway). Memory a peer can pin is bounded by the limits below,
//     whether or not it reads what the connection writes.
//
// The limits, with the implementations they follow:
//
//	control queue         maxQueuedControlFrames frames waiting for the socket (x/net/http2: 10000;
//	                      Envoy max_outbound_frames 10000). readLoop never writes to the socket itself
//	                      (write.go), so a peer that does not read stalls the writers, not the reader,
//	                      and PING or SETTINGS floods fill this queue until the limit closes the
//	                      connection.
//	rapid reset           server: a stream holds its MAX_CONCURRENT_STREAMS slot until its handler has
//	                      returned, even after a RST_STREAM (CVE-2023-44487); streams beyond that wait
//	                      for a slot, at most maxUnstartedPerSlot per slot (x/net/http2: 4); and a
//	                      connection whose peer reset at least half of its first prematureResetStreams
//	                      streams (or more) before the response was sent is closed (Envoy:
//	                      overload.premature_reset_total_stream_count 500, more than 50%).
//	CONTINUATION          at most maxContinuationFrames frames and 2x SETTINGS_MAX_HEADER_LIST_SIZE
//	                      encoded bytes per header block (CVE-2024-27316 class; nghttp2 allows 8
//	                      CONTINUATIONs; x/net/http2 refuses a fragment above 2x the remaining list size).
//	empty DATA            maxEmptyDataFrames consecutive DATA frames without data and END_STREAM
//	                      (Envoy max_consecutive_inbound_frames_with_empty_payload, default 1: HBONE
//	                      peers gain nothing from them either way, so the margin favours interop).
//	WINDOW_UPDATE         at most 5 + 2*(streams + windowUpdatesPerData*DATA units sent), a unit being
//	                      16 KiB of DATA (Envoy max_inbound_window_update_frames_per_data_frame_sent 10,
//	                      per DATA frame; our frames are up to 1 MiB, so we count 16 KiB units).
//	PRIORITY              at most priorityPerStream*(1+streams) (Envoy max_inbound_priority_frames_per_stream).
//	SETTINGS              at most maxSettingsPerFrame parameters per frame (x/net/http2: 100), and a
//	                      new initial window is applied to the streams once per frame.
//	resets we send        at most maxLocalResets streams reset because of the peer's errors, refusals
//	                      included (hyper/h2 max_local_error_reset_streams 1024, RUSTSEC-2024-0003).

import (
	"bufio"
	"errors"
	"strconv"

	"golang.org/x/net/http2"
)

const (
	maxQueuedControlFrames = 10000
	maxUnstartedPerSlot    = 4
	prematureResetStreams  = 500
	maxContinuationFrames  = 16
	maxEmptyDataFrames     = 16
	windowUpdatesPerData   = 10
	dataUnit               = 16 << 10
	priorityPerStream      = 100
	maxSettingsPerFrame    = 100
	maxLocalResets         = 1024
)

// floodKind names the limit a connection error exceeded (zero: a plain protocol error).
type floodKind uint8

const (
	floodNone floodKind = iota
	floodRapidReset
	floodControlQueue
	floodContinuation
	floodEmptyFrames
	floodWindowUpdate
	floodPriority
	floodSettings
	floodResets
)

// calm returns the connection error for exceeding the limit kind.
func calm(kind floodKind, reason string) connError {
	return connError{code: http2.ErrCodeEnhanceYourCalm, reason: reason, flood: kind}
}

// floodCounters are readLoop's counts for the limits above.
type floodCounters struct {
	emptyData    int    // consecutive empty DATA frames
	windowUpdate uint64 // WINDOW_UPDATE frames received
	priority     uint64 // PRIORITY frames received
	localResets  int    // streams reset by this side because of the peer
	earlyResets  int    // server: streams the peer reset before the response was sent
}

// checkWindowUpdate counts one WINDOW_UPDATE against the streams and the DATA this side has sent.
func (c *conn) checkWindowUpdate() error {
	c.flood.windowUpdate++
	if c.flood.windowUpdate > 5+2*(c.opened.Load()+windowUpdatesPerData*c.dataUnits.Load()) {
		return calm(floodWindowUpdate, "too many WINDOW_UPDATE frames for the data sent")
	}
	return nil
}

// checkPriority counts one PRIORITY frame.
func (c *conn) checkPriority() error {
	c.flood.priority++
	if c.flood.priority > priorityPerStream*(1+c.opened.Load()) {
		return calm(floodPriority, "too many PRIORITY frames")
	}
	return nil
}

// checkEmptyData counts a DATA frame: n bytes of data (padding excluded), end if it carried END_STREAM.
func (c *conn) checkEmptyData(n int, end bool) error {
	if n > 0 || end {
		c.flood.emptyData = 0
		return nil
	}
	c.flood.emptyData++
	if c.flood.emptyData > maxEmptyDataFrames {
		return calm(floodEmptyFrames, "too many empty DATA frames")
	}
	return nil
}

// countLocalReset counts a stream this side resets or refuses because of the peer.
func (c *conn) countLocalReset() error {
	c.flood.localResets++
	if c.flood.localResets > maxLocalResets {
		return calm(floodResets, "too many streams reset for errors")
	}
	return nil
}

// countEarlyReset counts (server) a stream the peer reset before its response was sent and tells whether
// the peer now resets too many of its streams that way.
func (c *conn) countEarlyReset() error {
	c.flood.earlyResets++
	opened := c.opened.Load()
	if opened >= prematureResetStreams && 2*uint64(c.flood.earlyResets) >= opened {
		return calm(floodRapidReset, "too many streams reset before their response ("+
			strconv.Itoa(c.flood.earlyResets)+" of "+strconv.FormatUint(opened, 10)+")")
	}
	return nil
}

var (
	errTooManyContinuations = errors.New("hbone: too many CONTINUATION frames")
	errHeaderBlockTooLarge  = errors.New("hbone: header block too large")
)

// headerGuard is what the Framer reads from: br, plus a watch over header blocks. While one is open (a
// HEADERS frame without END_HEADERS was announced), it follows the frames passing through it, counting
// CONTINUATION frames and the block's bytes, and fails the read when the block exceeds its limits, before
// the Framer buffers or decodes more of it. Outside header blocks it only forwards reads.
type headerGuard struct {
	r         *bufio.Reader
	armed     bool
	payload   int // bytes left of the current frame's payload
	hdr       [9]byte
	hn        int // bytes of the next frame header seen so far
	lastFrame bool
	frames    int
	bytes     int
	maxBytes  int
}

// arm starts watching a header block whose HEADERS frame header was just read.
func (g *headerGuard) arm(fh http2.FrameHeader, maxBytes int) {
	*g = headerGuard{r: g.r, armed: true, payload: int(fh.Length), bytes: int(fh.Length), maxBytes: maxBytes}
}

func (g *headerGuard) disarm() { g.armed = false }

func (g *headerGuard) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if !g.armed {
		return n, err
	}
	for b := p[:n]; len(b) > 0; {
		if g.payload > 0 {
			k := min(g.payload, len(b))
			g.payload -= k
			b = b[k:]
			continue
		}
		if g.lastFrame {
			g.armed = false // the block ended; what follows is for the Framer alone
			break
		}
		k := copy(g.hdr[g.hn:], b)
		g.hn += k
		b = b[k:]
		if g.hn < len(g.hdr) {
			break
		}
		g.hn = 0
		length := int(g.hdr[0])<<16 | int(g.hdr[1])<<8 | int(g.hdr[2])
		if http2.FrameType(g.hdr[3]) != http2.FrameContinuation {
			g.armed = false // the Framer reports the protocol error
			break
		}
		g.frames++
		g.bytes += length
		switch {
		case g.frames > maxContinuationFrames:
			return 0, errTooManyContinuations // no bytes: io.ReadFull would drop the error of a full read
		case g.bytes > g.maxBytes:
			return 0, errHeaderBlockTooLarge
		}
		g.payload = length
		g.lastFrame = http2.Flags(g.hdr[4]).Has(http2.FlagContinuationEndHeaders)
	}
	return n, err
}
