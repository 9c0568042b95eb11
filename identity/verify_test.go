package identity

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/test/testutil"
)

func TestVerifyServerAndClientChain(t *testing.T) {
	ca := newTestCA(t, time.Hour)
	foreign := newTestCA(t, time.Hour)
	peer, err := ca.Issue(context.Background(), testID)
	if err != nil {
		t.Fatal(err)
	}
	foreignPeer, err := foreign.Issue(context.Background(), testID)
	if err != nil {
		t.Fatal(err)
	}
	// testutil's CA makes shapes LocalCA refuses to: several URI SANs, none, or one outside the trust domain.
	tu, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	multi, tuRoots, err := tu.IssueURIs([]string{"spiffe://other.td/ns/x/sa/y", testID2.String()}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherTD, _, err := tu.IssueURIs([]string{"spiffe://other.td/ns/x/sa/y"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	noURI, _, err := tu.IssueURIs(nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	clientOnly := signWithEKU(t, ca, testID, x509.ExtKeyUsageClientAuth)
	serverOnly := signWithEKU(t, ca, testID, x509.ExtKeyUsageServerAuth)

	tests := []struct {
		name       string
		chain      []*x509.Certificate
		roots      *x509.CertPool
		expected   []spiffeid.ID
		wantServer error // nil: accepted as testServerID
		wantClient error
		serverID   spiffeid.ID
		clientID   spiffeid.ID
	}{
		{name: "match", chain: peer.Chain(), roots: peer.RootPool(), expected: []spiffeid.ID{testID2, testID},
			serverID: testID, clientID: testID},
		{name: "unexpected identity", chain: peer.Chain(), roots: peer.RootPool(), expected: []spiffeid.ID{testID2},
			wantServer: ErrIdentityMismatch, clientID: testID},
		{name: "no expected identities", chain: peer.Chain(), roots: peer.RootPool(),
			wantServer: ErrIdentityMismatch, clientID: testID},
		{name: "foreign root", chain: foreignPeer.Chain(), roots: peer.RootPool(), expected: []spiffeid.ID{testID},
			wantServer: ErrInvalidChain, wantClient: ErrInvalidChain},
		{name: "no bundle", chain: peer.Chain(), expected: []spiffeid.ID{testID},
			wantServer: ErrInvalidChain, wantClient: ErrInvalidChain},
		{name: "empty chain", roots: peer.RootPool(), expected: []spiffeid.ID{testID},
			wantServer: ErrInvalidChain, wantClient: ErrInvalidChain},
		{name: "second URI SAN matches", chain: []*x509.Certificate{multi.Leaf}, roots: tuRoots, expected: []spiffeid.ID{testID2},
			serverID: testID2, clientID: testID2},
		{name: "other trust domain", chain: []*x509.Certificate{otherTD.Leaf}, roots: tuRoots, expected: []spiffeid.ID{testID},
			wantServer: ErrIdentityMismatch, wantClient: ErrTrustDomainMismatch},
		{name: "client-auth only", chain: []*x509.Certificate{clientOnly}, roots: peer.RootPool(), expected: []spiffeid.ID{testID},
			wantServer: ErrInvalidChain, clientID: testID},
		{name: "server-auth only", chain: []*x509.Certificate{serverOnly}, roots: peer.RootPool(), expected: []spiffeid.ID{testID},
			serverID: testID, wantClient: ErrInvalidChain},
		{name: "no URI SAN", chain: []*x509.Certificate{noURI.Leaf}, roots: tuRoots, expected: []spiffeid.ID{testID},
			wantServer: ErrIdentityMismatch, wantClient: ErrTrustDomainMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := VerifyServerChain(tt.chain, tt.roots, tt.expected)
			if tt.wantServer != nil {
				if !errors.Is(err, tt.wantServer) {
					t.Errorf("VerifyServerChain = %v, %v; want %v", id, err, tt.wantServer)
				}
			} else if err != nil || id != tt.serverID {
				t.Errorf("VerifyServerChain = %v, %v; want %v", id, err, tt.serverID)
			}
			id, err = VerifyClientChain(tt.chain, tt.roots, td)
			if tt.wantClient != nil {
				if !errors.Is(err, tt.wantClient) {
					t.Errorf("VerifyClientChain = %v, %v; want %v", id, err, tt.wantClient)
				}
			} else if err != nil || id != tt.clientID {
				t.Errorf("VerifyClientChain = %v, %v; want %v", id, err, tt.clientID)
			}
		})
	}
}

// signWithEKU signs a leaf for id with the single extended key usage eku, using ca's root key.
func signWithEKU(t testing.TB, ca *LocalCA, id spiffeid.ID, eku x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	key, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
		URIs:         []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}
