package identity

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestIssuerOptionsValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		o    IssuerOptions
		want string
	}{
		{"local CA by default", IssuerOptions{CADir: "/x"}, ""},
		{"local CA needs a directory", IssuerOptions{Source: SourceLocalCA}, "--ca-dir is required"},
		{"istiod needs an address", IssuerOptions{Source: SourceIstiod}, "--ca-address is required"},
		{"spiffe needs nothing", IssuerOptions{Source: SourceSPIFFE}, ""},
		{"unknown source", IssuerOptions{Source: "vault"}, `unknown identity source "vault"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.o.Validate()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Errorf("Validate() = %v, want %q", err, c.want)
			}
		})
	}
}

// TestNewIssuer builds each source: the local CA issues at once, the Workload API client needs its Run
// goroutine and the istiod client must be closed.
func TestNewIssuer(t *testing.T) {
	dir := t.TempDir()
	local, err := NewIssuer(IssuerOptions{CADir: dir, TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b")
	c, err := local.Issue(context.Background(), id)
	if err != nil || c.ID() != id {
		t.Fatalf("local CA issued %v, %v", c, err)
	}
	if _, ok := local.(interface{ Run(context.Context) error }); ok {
		t.Error("the local CA claims to need a goroutine")
	}
	w, err := NewIssuer(IssuerOptions{Source: SourceSPIFFE, SPIFFESocket: "unix:///nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := w.(interface{ Run(context.Context) error }); !ok {
		t.Errorf("%T has no Run", w)
	}
	ca, err := NewIssuer(IssuerOptions{Source: SourceIstiod, CAAddress: "127.0.0.1:1", CARootFile: filepath.Join(dir, RootCertFileName)})
	if err != nil {
		t.Fatal(err)
	}
	closer, ok := ca.(io.Closer)
	if !ok {
		t.Fatalf("%T has no Close", ca)
	}
	closer.Close()
	if _, err := NewIssuer(IssuerOptions{Source: SourceIstiod}); err == nil {
		t.Error("istiod without an address was accepted")
	}
}
