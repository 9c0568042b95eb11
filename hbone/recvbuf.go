package hbone

// recvbuf.go: the per-stream receive queue.
//
// Invariants: chunks come from size-class pools and go back when fully read or on reset, so an idle
// stream holds no buffer (and a connection without streams none either: its spares are parked); a chunk is at most twice the payload it was allocated for, and small frames
// are packed into the tail chunk, so a peer cannot make memory grow faster than 2x the flow-control
// window. recvBuffer has no lock: Stream.rmu guards it.

import (
	"math/bits"
	"sync"
)

const (
	minChunkShift = 14 // 16 KiB
	maxChunkShift = 24 // 16 MiB, above the largest frame (2^24-1)
)

var chunkPools [maxChunkShift - minChunkShift + 1]sync.Pool

// getChunk returns a pooled buffer of the smallest size class (a power of two, at least 16 KiB) that
// holds n bytes, with len == cap.
func getChunk(n int) []byte {
	class := 0
	if n > 1<<minChunkShift {
		class = bits.Len(uint(n-1)) - minChunkShift
	}
	if p, ok := chunkPools[class].Get().(*[]byte); ok {
		return *p
	}
	return make([]byte, 1<<(class+minChunkShift))
}

// putChunk returns b, obtained from getChunk, to its pool.
func putChunk(b []byte) {
	class := bits.Len(uint(cap(b))) - 1 - minChunkShift
	if class < 0 || class >= len(chunkPools) || cap(b) != 1<<(class+minChunkShift) {
		return
	}
	b = b[:cap(b)]
	chunkPools[class].Put(&b)
}

type chunk struct {
	b    []byte // pooled, len == cap
	r, w int    // unread bytes are b[r:w]
}

// recvBuffer is a FIFO of bytes received on a stream and not yet read.
type recvBuffer struct {
	q     []chunk
	n     int          // total unread bytes
	spare *spareChunks // the connection's recycled pieces; nil: use the pools only
}

// spareChunks keeps a few piece-sized chunks per connection, so that the pieces readLoop fills and
// Read empties rotate through memory that is still in cache instead of going through sync.Pool (whose
// per-P caches empty on the reading P and fill on the consuming one).
// While the connection has no stream it is parked: it holds nothing and sends what it is given back to
// the pools (wbuf.go).
type spareChunks struct {
	mu     sync.Mutex
	free   [][]byte
	parked bool
}

// park gives the spare chunks back to the pools and keeps none until unpark.
func (sc *spareChunks) park() {
	sc.mu.Lock()
	free := sc.free
	sc.free, sc.parked = nil, true
	sc.mu.Unlock()
	for _, b := range free {
		putChunk(b)
	}
}

func (sc *spareChunks) unpark() {
	sc.mu.Lock()
	sc.parked = false
	sc.mu.Unlock()
}

// held returns the bytes held.
func (sc *spareChunks) held() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	n := 0
	for _, b := range sc.free {
		n += cap(b)
	}
	return n
}

const maxSpare = 4

func (sc *spareChunks) get() []byte {
	sc.mu.Lock()
	if n := len(sc.free); n > 0 {
		b := sc.free[n-1]
		sc.free[n-1] = nil
		sc.free = sc.free[:n-1]
		sc.mu.Unlock()
		return b
	}
	sc.mu.Unlock()
	return getChunk(pieceSize)
}

func (sc *spareChunks) put(b []byte) {
	if cap(b) != pieceSize {
		putChunk(b)
		return
	}
	sc.mu.Lock()
	if len(sc.free) < maxSpare && !sc.parked {
		sc.free = append(sc.free, b[:cap(b)])
		b = nil
	}
	sc.mu.Unlock()
	if b != nil {
		putChunk(b)
	}
}

func (rb *recvBuffer) release(b []byte) {
	if rb.spare != nil {
		rb.spare.put(b)
		return
	}
	putChunk(b)
}

func (rb *recvBuffer) len() int { return rb.n }

// appendCopy copies p into the tail chunk, or new chunks when it does not fit.
func (rb *recvBuffer) appendCopy(p []byte) {
	for len(p) > 0 {
		if k := len(rb.q); k > 0 {
			t := &rb.q[k-1]
			if m := copy(t.b[t.w:], p); m > 0 {
				t.w += m
				rb.n += m
				p = p[m:]
				continue
			}
		}
		rb.q = append(rb.q, chunk{b: getChunk(len(p))})
	}
}

// appendChunk takes ownership of b (from getChunk) holding n bytes.
func (rb *recvBuffer) appendChunk(b []byte, n int) {
	rb.q = append(rb.q, chunk{b: b, w: n})
	rb.n += n
}

// read copies up to len(p) bytes out and releases emptied chunks.
func (rb *recvBuffer) read(p []byte) int {
	total := 0
	for len(p) > 0 && len(rb.q) > 0 {
		h := &rb.q[0]
		m := copy(p, h.b[h.r:h.w])
		h.r += m
		total += m
		p = p[m:]
		if h.r == h.w {
			rb.release(h.b)
			rb.q[0] = chunk{}
			rb.q = rb.q[1:]
		}
	}
	rb.n -= total
	if len(rb.q) == 0 {
		rb.q = nil
	}
	return total
}

// pop removes and returns the head chunk, which the caller must release. The queue must not be empty.
func (rb *recvBuffer) pop() chunk {
	h := rb.q[0]
	rb.q[0] = chunk{}
	rb.q = rb.q[1:]
	rb.n -= h.w - h.r
	if len(rb.q) == 0 {
		rb.q = nil
	}
	return h
}

// reset drops all unread bytes and returns how many there were.
func (rb *recvBuffer) reset() int {
	n := rb.n
	for _, c := range rb.q {
		rb.release(c.b)
	}
	rb.q, rb.n = nil, 0
	return n
}
