package identity

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Certificate is one issued workload identity: a leaf certificate with its intermediates, the private key,
// and the trust bundle (roots) that came with it. A Certificate is immutable once built and safe to share
// between goroutines; callers must not modify the slices or structs its methods return.
type Certificate struct {
	id        spiffeid.ID
	chain     []*x509.Certificate
	roots     []*x509.Certificate
	key       crypto.Signer
	tlsCert   tls.Certificate
	rootPool  *x509.CertPool
	notBefore time.Time
	notAfter  time.Time
}

// NewCertificate checks and assembles a Certificate. chain is leaf first, then intermediates (no roots);
// roots is the trust bundle. It reports ErrIdentityMismatch if the leaf's first URI SAN is not id, and
// ErrInvalidChain if the chain or roots are empty, the key does not match the leaf, or the chain does not
// lead to one of the roots.
func NewCertificate(id spiffeid.ID, chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate) (*Certificate, error) {
	switch {
	case len(chain) == 0:
		return nil, fmt.Errorf("build certificate: empty chain: %w", ErrInvalidChain)
	case len(roots) == 0:
		return nil, fmt.Errorf("build certificate: no roots: %w", ErrInvalidChain)
	case key == nil:
		return nil, fmt.Errorf("build certificate: no key: %w", ErrInvalidChain)
	}
	leaf := chain[0]
	got, err := LeafID(leaf)
	if err != nil {
		return nil, fmt.Errorf("build certificate: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("build certificate: leaf is %q, want %q: %w", got, id, ErrIdentityMismatch)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("build certificate: private key does not match leaf: %w", ErrInvalidChain)
	}

	notBefore, notAfter := leaf.NotBefore, leaf.NotAfter
	verifyAt := leaf.NotBefore
	for _, c := range chain[1:] {
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
		if c.NotBefore.After(verifyAt) {
			verifyAt = c.NotBefore
		}
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("build certificate: empty validity window: %w", ErrInvalidChain)
	}
	// Verify at the current time when it falls in the chain's window: istiod backdates leaves by two
	// minutes but not a freshly created root, so verifying at the leaf's NotBefore would reject every
	// certificate of a new CA for its first minutes.
	if now := time.Now(); now.After(verifyAt) {
		verifyAt = now
		if now.After(notAfter) {
			verifyAt = notAfter
		}
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   verifyAt,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("build certificate: verify chain to roots: %w: %w", ErrInvalidChain, err)
	}

	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	return &Certificate{
		id:        id,
		chain:     chain,
		roots:     roots,
		key:       key,
		tlsCert:   tls.Certificate{Certificate: raw, PrivateKey: key, Leaf: leaf},
		rootPool:  pool,
		notBefore: notBefore,
		notAfter:  notAfter,
	}, nil
}

// ID returns the SPIFFE ID the certificate was issued for.
func (c *Certificate) ID() spiffeid.ID { return c.id }

// Leaf returns the leaf certificate.
func (c *Certificate) Leaf() *x509.Certificate { return c.chain[0] }

// Chain returns the leaf followed by its intermediates, without roots.
func (c *Certificate) Chain() []*x509.Certificate { return c.chain }

// Roots returns the trust bundle delivered with the certificate.
func (c *Certificate) Roots() []*x509.Certificate { return c.roots }

// RootPool returns the trust bundle as a pool for chain verification.
func (c *Certificate) RootPool() *x509.CertPool { return c.rootPool }

// TLSCertificate returns the chain and key ready for tls.Config (Leaf is set).
func (c *Certificate) TLSCertificate() *tls.Certificate { return &c.tlsCert }

// PrivateKey returns the private key of the leaf.
func (c *Certificate) PrivateKey() crypto.Signer { return c.key }

// NotBefore returns the start of the leaf's validity.
func (c *Certificate) NotBefore() time.Time { return c.notBefore }

// NotAfter returns the end of the chain's validity: the earliest NotAfter of the leaf and intermediates.
func (c *Certificate) NotAfter() time.Time { return c.notAfter }

// RefreshAt returns the half-life point, NotBefore + (NotAfter-NotBefore)/2, when renewal is due.
func (c *Certificate) RefreshAt() time.Time { return refreshAt(c.notBefore, c.notAfter) }

// ValidAt reports whether now is before NotAfter. Like ztunnel, the Manager serves a certificate until then.
func (c *Certificate) ValidAt(now time.Time) bool { return now.Before(c.notAfter) }

// MarshalPEM encodes the chain (leaf first), the private key (PKCS#8) and the roots as PEM.
func (c *Certificate) MarshalPEM() (chainPEM, keyPEM, rootsPEM []byte, err error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("marshal private key: %w", err)
	}
	return encodeCerts(c.chain), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), encodeCerts(c.roots), nil
}

func refreshAt(notBefore, notAfter time.Time) time.Time {
	return notBefore.Add(notAfter.Sub(notBefore) / 2)
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// LeafID returns the SPIFFE ID in the first URI SAN of cert, the one ztunnel and Istio treat as the identity.
func LeafID(cert *x509.Certificate) (spiffeid.ID, error) {
	if len(cert.URIs) == 0 {
		return spiffeid.ID{}, fmt.Errorf("read leaf identity: no URI SAN: %w", ErrIdentityMismatch)
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("read leaf identity: %w: %w", ErrIdentityMismatch, err)
	}
	return id, nil
}

// ParseCertificatesPEM parses every CERTIFICATE block in data. It reports ErrInvalidChain when data holds no
// certificate or a block that does not parse; non-certificate blocks are rejected too.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("parse certificates: unexpected PEM block %q: %w", b.Type, ErrInvalidChain)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificates: %w: %w", ErrInvalidChain, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("parse certificates: no PEM certificate: %w", ErrInvalidChain)
	}
	return out, nil
}
