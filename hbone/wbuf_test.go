package hbone

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// heldBuffers returns the bytes of per-connection buffers c holds that an idle connection gives back
// (write buffer, spare receive chunks), or -1 while the write lock is taken.
func (c *conn) heldBuffers() int {
	if !c.tryLockWrite() {
		return -1
	}
	n := 0
	if c.bw.buf != nil {
		n += cap(*c.bw.buf)
	}
	<-c.wsem // no settle: that would release what this measures
	if c.ctrlNew.Load() {
		c.settle() // queued while this held the lock
	}
	return n + c.spare.held()
}

// poolConns and serverConns return the live connections of p and s.
func poolConns(p *Pool) []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var cs []*conn
	for pc := range p.all {
		if pc.c != nil {
			cs = append(cs, pc.c)
		}
	}
	return cs
}

func serverConns(s *Server) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cs []*conn
	for c := range s.conns {
		cs = append(cs, c)
	}
	return cs
}

// idleHeld returns the buffers the connections hold, -1 if one is busy or has a stream.
func idleHeld(cs []*conn) int {
	n := 0
	for _, c := range cs {
		if c.streamCount.Load() != 0 {
			return -1
		}
		h := c.heldBuffers()
		if h < 0 {
			return -1
		}
		n += h
	}
	return n
}

// echoRoundTrip sends n random bytes over s, reads them back, half-closes and reads EOF.
func echoRoundTrip(s *Stream, n int) error {
	want := make([]byte, n)
	_, _ = rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(want)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echo of %d bytes came back as %d different bytes", n, len(got))
	}
	return nil
}

func TestIdleConnReleasesBuffers(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	p := newTestPool(t, pki, nil)
	tg := ts.target(pki)

	for round := range 3 {
		// Several streams at once, with transfers beyond the stream window: flow control, spare chunks
		// and the write buffer all in use, then all streams gone.
		const streams, size = 4, 6 << 20
		g := &group{}
		for range streams {
			s := dialT(t, p, tg)
			g.Go(func() error {
				if err := echoRoundTrip(s, size); err != nil {
					return err
				}
				return s.Close()
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		cs := append(poolConns(p), serverConns(ts.Server)...)
		if len(cs) != 2 {
			t.Fatalf("round %d: %d connections, want one each side", round, len(cs))
		}
		testutil.WaitFor(t, 5*time.Second, "idle connections to give back their buffers", func() bool {
			return idleHeld(cs) == 0
		})
	}
	// Still a working connection: one more stream, then close it from the server's side first.
	s := dialT(t, p, tg)
	if err := echoRoundTrip(s, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after EOF: %v", err)
	}
	_ = s.Close()
	if st := p.Stats(); st.Conns != 1 {
		t.Fatalf("pool has %d connections, want the one reused", st.Conns)
	}
	cs := append(poolConns(p), serverConns(ts.Server)...)
	testutil.WaitFor(t, 5*time.Second, "buffers given back again", func() bool { return idleHeld(cs) == 0 })
}

func TestWriteBuf(t *testing.T) {
	var out bytes.Buffer
	b := writeBuf{w: &out}
	if !b.release() || b.buf != nil {
		t.Fatal("fresh writeBuf holds a buffer")
	}
	if _, err := b.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if b.release() {
		t.Fatal("release gave back a buffer holding bytes")
	}
	big := bytes.Repeat([]byte{'x'}, writeBufSize+10)
	if _, err := b.Write(big); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := "abc" + string(big); out.String() != want || b.Buffered() != 0 {
		t.Fatalf("wrote %d bytes, want %d; %d buffered", out.Len(), len(want), b.Buffered())
	}
	if !b.release() || b.buf != nil {
		t.Fatal("empty writeBuf kept its buffer")
	}
	// Large writes with nothing buffered go straight through.
	out.Reset()
	if _, err := b.Write(big); err != nil || out.Len() != len(big) || b.buf != nil {
		t.Fatalf("direct write: err %v, %d bytes out, buffer taken %v", err, out.Len(), b.buf != nil)
	}
	// A write error sticks.
	fail := writeBuf{w: failWriter{}}
	_, _ = fail.Write([]byte("x"))
	if err := fail.Flush(); err == nil {
		t.Fatal("Flush to a failing writer succeeded")
	}
	if _, err := fail.Write([]byte("y")); err == nil {
		t.Fatal("Write after a failed Flush succeeded")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken") }
