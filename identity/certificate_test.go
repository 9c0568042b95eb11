package identity

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"
)

func TestNewCertificateRejects(t *testing.T) {
	ca := newTestCA(t, time.Hour)
	other := newTestCA(t, time.Hour)
	good, err := ca.Issue(context.Background(), testID)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := newKey()
	tests := []struct {
		name  string
		build func() (*Certificate, error)
		want  error
	}{
		{"empty chain", func() (*Certificate, error) {
			return NewCertificate(testID, nil, good.PrivateKey(), good.Roots())
		}, ErrInvalidChain},
		{"no roots", func() (*Certificate, error) {
			return NewCertificate(testID, good.Chain(), good.PrivateKey(), nil)
		}, ErrInvalidChain},
		{"nil key", func() (*Certificate, error) {
			return NewCertificate(testID, good.Chain(), nil, good.Roots())
		}, ErrInvalidChain},
		{"other identity", func() (*Certificate, error) {
			return NewCertificate(testID2, good.Chain(), good.PrivateKey(), good.Roots())
		}, ErrIdentityMismatch},
		{"key of another leaf", func() (*Certificate, error) {
			return NewCertificate(testID, good.Chain(), otherKey, good.Roots())
		}, ErrInvalidChain},
		{"foreign roots", func() (*Certificate, error) {
			return NewCertificate(testID, good.Chain(), good.PrivateKey(), []*x509.Certificate{other.Root()})
		}, ErrInvalidChain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.build()
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, %v; want %v", c, err, tt.want)
			}
		})
	}
}

func TestCertificateMarshalPEMRoundTrip(t *testing.T) {
	ca := newTestCA(t, time.Hour)
	c, err := ca.Issue(context.Background(), testID)
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, keyPEM, rootsPEM, err := c.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ParseCertificatesPEM(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ParseCertificatesPEM(rootsPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	back, err := NewCertificate(testID, chain, key, roots)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Leaf().Equal(c.Leaf()) || !back.NotAfter().Equal(c.NotAfter()) {
		t.Fatal("round trip changed the certificate")
	}
}

func TestParseCertificatesPEMRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":       "",
		"not pem":     "hello",
		"private key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
		"bad der":     "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseCertificatesPEM([]byte(in)); !errors.Is(err, ErrInvalidChain) {
				t.Fatalf("err = %v, want ErrInvalidChain", err)
			}
		})
	}
}

// TestNewCertificateBackdatedLeaf accepts a leaf backdated before its (new) root's NotBefore, as istiod
// issues them: the chain is valid now, which is what matters.
func TestNewCertificateBackdatedLeaf(t *testing.T) {
	ca := newTestCA(t, time.Hour)
	key, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(testID.String())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		NotBefore:    ca.Root().NotBefore.Add(-2 * time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Root(), key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewCertificate(testID, []*x509.Certificate{leaf}, key, []*x509.Certificate{ca.Root()}); err != nil {
		t.Fatalf("backdated leaf of a new root rejected: %v", err)
	}
}
