package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CA is an in-memory ECDSA P-256 certificate authority for tests. It issues SPIFFE X.509 SVIDs shaped
// like istiod's: one URI SAN, digitalSignature|keyEncipherment, serverAuth+clientAuth EKUs. A CA made
// by NewIntermediate appends its own chain to every leaf it issues, so peers must verify through it.
type CA struct {
	// Cert is this CA's certificate; Key signs what it issues.
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// chain is the DER of Cert and every intermediate above it, leaf-to-root order, excluding the root.
	chain [][]byte
	root  *x509.Certificate
}

// NewCA creates a self-signed root CA for trustDomain (used only as the subject's organisation), valid
// for 24 hours.
func NewCA(trustDomain string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ca key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "test root " + trustDomain},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, root: cert}, nil
}

// NewIntermediate creates an intermediate CA signed by ca. Leaves it issues carry the intermediate
// chain; Roots still returns only the root.
func (ca *CA) NewIntermediate() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate intermediate key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "test intermediate"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              ca.Cert.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("create intermediate certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse intermediate certificate: %w", err)
	}
	chain := append([][]byte{der}, ca.chain...)
	return &CA{Cert: cert, Key: key, chain: chain, root: ca.root}, nil
}

// Roots returns a new pool holding the root certificate of ca (the trust bundle).
func (ca *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.root)
	return p
}

// Issue signs a leaf certificate whose only SAN is the URI of id, valid from one minute ago for ttl, and
// returns it with its private key and intermediate chain, plus the trust bundle (Roots).
func (ca *CA) Issue(id spiffeid.ID, ttl time.Duration) (tls.Certificate, *x509.CertPool, error) {
	return ca.IssueURIs([]string{id.String()}, ttl)
}

// IssueURIs is Issue with arbitrary URI SANs (none, several, or non-SPIFFE ones), for negative tests.
func (ca *CA) IssueURIs(uris []string, ttl time.Duration) (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("generate leaf key: %w", err)
	}
	var parsed []*url.URL
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("parse uri san %q: %w", u, err)
		}
		parsed = append(parsed, pu)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         parsed,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("create leaf certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("parse leaf certificate: %w", err)
	}
	cert := tls.Certificate{
		Certificate: append([][]byte{der}, ca.chain...),
		PrivateKey:  key,
		Leaf:        leaf,
	}
	return cert, ca.Roots(), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("read random serial: %v", err))
	}
	return n
}
