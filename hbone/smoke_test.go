package hbone

import (
	"io"
	"testing"

	"github.com/ambit-mesh/ambit/test/testutil"
)

func TestSmokeEcho(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	p := newTestPool(t, pki, nil)
	s := dialT(t, p, ts.target(pki))
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "hello" {
		t.Fatalf("got %q", b)
	}
	t.Log(p.Stats())
}
