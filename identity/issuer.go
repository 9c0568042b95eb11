package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Issuer obtains a fresh certificate for one SPIFFE ID. Implementations are safe for concurrent use, honour
// ctx, and return a Certificate whose ID is id.
type Issuer interface {
	Issue(ctx context.Context, id spiffeid.ID) (*Certificate, error)
}

var (
	_ Issuer = (*LocalCA)(nil)
	_ Issuer = (*IstiodCA)(nil)
	_ Issuer = (*WorkloadAPI)(nil)
)

// newKey generates the ECDSA P-256 key used for every workload certificate.
func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// NewCSR returns a PEM certificate request for id signed by key, shaped as ztunnel's: empty subject,
// SHA-256 signature, and a single URI SAN carrying the SPIFFE ID.
func NewCSR(id spiffeid.ID, key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		SignatureAlgorithm: x509.ECDSAWithSHA256,
		URIs:               []*url.URL{id.URL()},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create csr: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParsePrivateKeyPEM parses the first PEM block of data as a PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) private key.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("parse private key: no PEM block: %w", ErrInvalidChain)
	}
	var (
		k   any
		err error
	)
	switch b.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("parse private key: unsupported key type %T", k)
	}
	return s, nil
}
