package hbone

import (
	"context"
	"crypto/x509"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/test/testutil"
)

func TestAcceptIDs(t *testing.T) {
	id := spiffeid.RequireFromString
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	a := id("spiffe://cluster.local/ns/a/sa/a")
	b := id("spiffe://cluster.local/ns/b/sa/b")
	foreign := id("spiffe://other.td/ns/a/sa/a")
	tests := []struct {
		name     string
		ids      []spiffeid.ID
		expected []spiffeid.ID
		want     spiffeid.ID
		wantErr  bool
	}{
		{name: "client in trust domain", ids: []spiffeid.ID{a}, want: a},
		{name: "client foreign", ids: []spiffeid.ID{foreign}, wantErr: true},
		{name: "client first matching of several", ids: []spiffeid.ID{foreign, b}, want: b},
		{name: "client no ids", wantErr: true},
		{name: "server expected", ids: []spiffeid.ID{b}, expected: []spiffeid.ID{a, b}, want: b},
		{name: "server unexpected", ids: []spiffeid.ID{a}, expected: []spiffeid.ID{b}, wantErr: true},
		{name: "server foreign though path matches", ids: []spiffeid.ID{foreign}, expected: []spiffeid.ID{a}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got spiffeid.ID
			var err error
			if tt.expected == nil {
				got, err = acceptClientID(tt.ids, td)
			} else {
				got, err = acceptServerID(tt.ids, tt.expected, td)
			}
			if tt.wantErr {
				if !errors.Is(err, ErrPeerIdentity) {
					t.Fatalf("got %v, %v; want ErrPeerIdentity", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestVerifyChain(t *testing.T) {
	root, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate()
	if err != nil {
		t.Fatal(err)
	}
	other, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/a")
	chain := func(ca *testutil.CA, uris []string, ttl time.Duration) []*x509.Certificate {
		cert, _, err := ca.IssueURIs(uris, ttl)
		if err != nil {
			t.Fatal(err)
		}
		var out []*x509.Certificate
		for _, der := range cert.Certificate {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, c)
		}
		return out
	}
	tests := []struct {
		name    string
		certs   []*x509.Certificate
		wantIDs int
		wantErr bool
	}{
		{name: "direct", certs: chain(root, []string{id.String()}, time.Hour), wantIDs: 1},
		{name: "via intermediate", certs: chain(inter, []string{id.String()}, time.Hour), wantIDs: 1},
		{name: "intermediate missing", certs: chain(inter, []string{id.String()}, time.Hour)[:1], wantErr: true},
		{name: "other root", certs: chain(other, []string{id.String()}, time.Hour), wantErr: true},
		{name: "expired", certs: chain(root, []string{id.String()}, -time.Second), wantErr: true},
		{name: "non-SPIFFE URIs skipped", certs: chain(root, []string{"https://x.example/a", id.String()}, time.Hour), wantIDs: 1},
		{name: "empty", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids, err := verifyChain(tt.certs, root.Roots(), x509.ExtKeyUsageClientAuth)
			if tt.wantErr != (err != nil) || len(ids) != tt.wantIDs {
				t.Fatalf("verifyChain = %v, %v", ids, err)
			}
		})
	}
}

func TestIntermediateChainEndToEnd(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	inter, err := pki.ca.NewIntermediate()
	if err != nil {
		t.Fatal(err)
	}
	issue := func(id spiffeid.ID) *Credentials {
		cert, roots, err := inter.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &Credentials{ID: id, Certificate: cert, Roots: roots}
	}
	srvCreds, cliCreds := issue(pki.serverID), issue(pki.clientID)
	ts := startServer(t, pki, echoHandler(), func(s *Server) {
		s.Credentials = func(context.Context, netip.AddrPort) (*Credentials, error) { return srvCreds, nil }
	})
	p := newTestPool(t, pki, func(o *PoolOptions) {
		o.Credentials = func(context.Context, spiffeid.ID) (*Credentials, error) { return cliCreds, nil }
	})
	s := dialT(t, p, ts.target(pki))
	if s.PeerID() != pki.serverID {
		t.Fatalf("peer %v", s.PeerID())
	}
}

func TestCredentialsValidate(t *testing.T) {
	pki := newPKI(t)
	tests := []struct {
		name string
		c    *Credentials
	}{
		{"nil", nil},
		{"no id", &Credentials{Certificate: pki.client.Certificate, Roots: pki.client.Roots}},
		{"no cert", &Credentials{ID: pki.clientID, Roots: pki.client.Roots}},
		{"no roots", &Credentials{ID: pki.clientID, Certificate: pki.client.Certificate}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.c.validate(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if err := pki.client.validate(); err != nil {
		t.Fatal(err)
	}
}
