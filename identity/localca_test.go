package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/test/testutil"
)

var (
	testID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/echo")
	testID2 = spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/other")
)

func newTestCA(t testing.TB, ttl time.Duration) *LocalCA {
	t.Helper()
	ca, err := NewLocalCA(LocalCAOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestLocalCACreatesRootOnDiskAndReloads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca1, err := NewLocalCA(LocalCAOptions{Dir: dir, TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	keyPath, certPath := filepath.Join(dir, RootKeyFileName), filepath.Join(dir, RootCertFileName)
	for path, want := range map[string]os.FileMode{keyPath: 0o600, certPath: 0o644, dir: 0o700} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("root key is not a PKCS#8 PEM block")
	}
	root := ca1.Root()
	if !root.IsCA || root.PublicKeyAlgorithm != x509.ECDSA || root.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Fatalf("root: IsCA=%v alg=%v, want a P-256 CA", root.IsCA, root.PublicKeyAlgorithm)
	}
	if root.Subject.Organization[0] != "example.org" {
		t.Errorf("root organisation %v, want example.org", root.Subject.Organization)
	}

	// A second start loads the same root instead of creating one.
	ca2, err := NewLocalCA(LocalCAOptions{Dir: dir, TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if !ca2.Root().Equal(root) {
		t.Fatal("second start created a new root instead of loading the stored one")
	}
	// Certificates from the reloaded CA chain to the original root.
	id := spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b")
	c, err := ca2.Issue(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leaf().Verify(x509.VerifyOptions{Roots: poolOf(root)}); err != nil {
		t.Fatalf("leaf from reloaded CA does not verify against the first root: %v", err)
	}

	// Explicit files load the same root too.
	ca3, err := NewLocalCA(LocalCAOptions{CertFile: certPath, KeyFile: keyPath, TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if !ca3.Root().Equal(root) {
		t.Fatal("CertFile/KeyFile loaded a different root")
	}
}

func TestLocalCARefusesUnsafeState(t *testing.T) {
	t.Run("key readable by others", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := NewLocalCA(LocalCAOptions{Dir: dir}); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, RootKeyFileName), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := NewLocalCA(LocalCAOptions{Dir: dir}); !errors.Is(err, ErrKeyPermissions) {
			t.Fatalf("err = %v, want ErrKeyPermissions", err)
		}
	})
	t.Run("lone key file", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := NewLocalCA(LocalCAOptions{Dir: dir}); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, RootCertFileName)); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(filepath.Join(dir, RootKeyFileName))
		if _, err := NewLocalCA(LocalCAOptions{Dir: dir}); err == nil {
			t.Fatal("loaded a CA whose certificate is missing")
		}
		after, _ := os.ReadFile(filepath.Join(dir, RootKeyFileName))
		if !bytes.Equal(before, after) {
			t.Fatal("existing key was overwritten")
		}
	})
	t.Run("key of another root", func(t *testing.T) {
		a, b := t.TempDir(), t.TempDir()
		for _, d := range []string{a, b} {
			if _, err := NewLocalCA(LocalCAOptions{Dir: d}); err != nil {
				t.Fatal(err)
			}
		}
		_, err := NewLocalCA(LocalCAOptions{CertFile: filepath.Join(a, RootCertFileName), KeyFile: filepath.Join(b, RootKeyFileName)})
		if !errors.Is(err, ErrInvalidChain) {
			t.Fatalf("err = %v, want ErrInvalidChain", err)
		}
	})
	t.Run("options conflict", func(t *testing.T) {
		if _, err := NewLocalCA(LocalCAOptions{Dir: t.TempDir(), CertFile: "x", KeyFile: "y"}); err == nil {
			t.Fatal("accepted Dir together with files")
		}
		if _, err := NewLocalCA(LocalCAOptions{CertFile: "x"}); err == nil {
			t.Fatal("accepted CertFile without KeyFile")
		}
	})
}

func TestLocalCALeafShape(t *testing.T) {
	ca := newTestCA(t, 2*time.Hour)
	c, err := ca.Issue(context.Background(), testID)
	if err != nil {
		t.Fatal(err)
	}
	leaf := c.Leaf()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID.String() {
		t.Errorf("URI SANs %v, want [%s]", leaf.URIs, testID)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("unexpected extra SANs")
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("EKU %v, want serverAuth+clientAuth", leaf.ExtKeyUsage)
	}
	if leaf.IsCA || leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Error("leaf can sign certificates")
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 2*time.Hour {
		t.Errorf("lifetime %v, want 2h", got)
	}
	if leaf.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Error("leaf key is not P-256")
	}
	if c.ID() != testID || len(c.Chain()) != 1 || len(c.Roots()) != 1 || !c.Roots()[0].Equal(ca.Root()) {
		t.Errorf("certificate parts: id %v chain %d roots %d", c.ID(), len(c.Chain()), len(c.Roots()))
	}
	if c.TLSCertificate().Leaf != leaf || len(c.TLSCertificate().Certificate) != 1 {
		t.Error("TLSCertificate does not carry the leaf")
	}
	if want := leaf.NotBefore.Add(time.Hour); !c.RefreshAt().Equal(want) {
		t.Errorf("RefreshAt %v, want %v", c.RefreshAt(), want)
	}

	if _, err := ca.Issue(context.Background(), spiffeid.RequireFromString("spiffe://other.td/ns/a/sa/b")); !errors.Is(err, ErrTrustDomainMismatch) {
		t.Errorf("foreign trust domain: err = %v, want ErrTrustDomainMismatch", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ca.Issue(ctx, testID); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: err = %v", err)
	}
}

func TestLocalCASignCSR(t *testing.T) {
	ca := newTestCA(t, time.Hour)
	key, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(testID, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.SignCSR(csr, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 10*time.Minute {
		t.Errorf("lifetime %v, want requested 10m", got)
	}
	if _, err := NewCertificate(testID, []*x509.Certificate{leaf}, key, []*x509.Certificate{ca.Root()}); err != nil {
		t.Fatal(err)
	}

	tampered := bytes.Clone(csr)
	b, _ := pem.Decode(tampered)
	b.Bytes[len(b.Bytes)-5] ^= 0xff
	if _, err := ca.SignCSR(b.Bytes, 0); err == nil {
		t.Error("signed a CSR with a broken signature")
	}
	two, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{URIs: []*url.URL{testID.URL(), testID2.URL()}}, key)
	if err == nil {
		_, err = ca.SignCSR(two, 0)
	}
	if !errors.Is(err, ErrIdentityMismatch) {
		t.Errorf("two URI SANs: err = %v, want ErrIdentityMismatch", err)
	}
}

func TestLocalCAWithTestutilIntermediate(t *testing.T) {
	// A LocalCA loaded from an intermediate's files issues leaves that chain through it (istiod with a
	// plugged-in CA does the same).
	root, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath := writeCA(t, dir, inter.Cert, inter.Key)
	ca, err := NewLocalCA(LocalCAOptions{CertFile: certPath, KeyFile: keyPath})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := newKey()
	csr, _ := NewCSR(testID, key)
	leaf, err := ca.SignCSR(csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCertificate(testID, []*x509.Certificate{leaf, inter.Cert}, key, []*x509.Certificate{root.Cert})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.TLSCertificate().Certificate) != 2 {
		t.Fatal("TLS chain lacks the intermediate")
	}
	if _, err := NewCertificate(testID, []*x509.Certificate{leaf}, key, []*x509.Certificate{root.Cert}); !errors.Is(err, ErrInvalidChain) {
		t.Fatalf("chain without intermediate: err = %v, want ErrInvalidChain", err)
	}
}

func writeCA(t testing.TB, dir string, cert *x509.Certificate, key *ecdsa.PrivateKey) (certPath, keyPath string) {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "ca-cert.pem"), filepath.Join(dir, "ca-key.pem")
	if err := os.WriteFile(certPath, encodeCerts([]*x509.Certificate{cert}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestLocalCAConcurrentCreate starts several CAs on one empty directory at once, as agents and waypoints
// on one machine do: exactly one root is created and every CA uses it.
func TestLocalCAConcurrentCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	const n = 8
	roots := make(chan *x509.Certificate, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			ca, err := NewLocalCA(LocalCAOptions{Dir: dir})
			if err != nil {
				t.Error(err)
				return
			}
			roots <- ca.Root()
		})
	}
	wg.Wait()
	close(roots)
	var first *x509.Certificate
	for r := range roots {
		if first == nil {
			first = r
		} else if !first.Equal(r) {
			t.Fatal("concurrent starts created different roots")
		}
	}
}
