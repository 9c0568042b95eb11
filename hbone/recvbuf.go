package hbone

// recvbuf.go: the per-stream receive queue.
//
// Invariants: chunks come from size-class pools and go back when fully read or on reset, so an idle
// stream holds no buffer; a chunk is at most twice the payload it was allocated for, and small frames
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
	q []chunk
	n int // total unread bytes
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
			putChunk(h.b)
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

// reset drops all unread bytes and returns how many there were.
func (rb *recvBuffer) reset() int {
	n := rb.n
	for _, c := range rb.q {
		putChunk(c.b)
	}
	rb.q, rb.n = nil, 0
	return n
}
