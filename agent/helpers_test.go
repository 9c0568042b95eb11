package agent_test

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
)

// startEchoApp runs a pod application on loopback that echoes every connection; accepted, if not nil, gets a
// value per connection. It stops at cleanup.
func startEchoApp(t *testing.T, accepted chan<- struct{}) net.Listener {
	t.Helper()
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			if accepted != nil {
				accepted <- struct{}{}
			}
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()
	t.Cleanup(func() { app.Close(); <-done })
	return app
}

// testPool is an HBONE client pool whose identities ca issues. It closes at cleanup.
func testPool(t *testing.T, ca *identity.LocalCA) *hbone.Pool {
	t.Helper()
	pool, err := hbone.NewPool(hbone.PoolOptions{Credentials: func(ctx context.Context, id spiffeid.ID) (*hbone.Credentials, error) {
		c, err := ca.Issue(ctx, id)
		if err != nil {
			return nil, err
		}
		return &hbone.Credentials{ID: c.ID(), Certificate: *c.TLSCertificate(), Roots: c.RootPool()}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return pool
}
