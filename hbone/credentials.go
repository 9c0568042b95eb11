package hbone

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Credentials are one workload identity's TLS material: its SPIFFE ID, its certificate chain and key,
// and the trust bundle peers are verified against. Callers supply them through callbacks so a
// certificate manager can rotate them; hbone reads them once per connection and never mutates them.
type Credentials struct {
	ID          spiffeid.ID
	Certificate tls.Certificate
	Roots       *x509.CertPool
}

func (c *Credentials) validate() error {
	if c == nil {
		return errors.New("nil credentials")
	}
	if c.ID.IsZero() {
		return errors.New("credentials without spiffe id")
	}
	if len(c.Certificate.Certificate) == 0 || c.Certificate.PrivateKey == nil {
		return errors.New("credentials without certificate or key")
	}
	if c.Roots == nil {
		return errors.New("credentials without trust roots")
	}
	return nil
}

// alpnH2 is the only ALPN protocol either side offers.
const alpnH2 = "h2"

// serverTLSConfig returns the TLS configuration for one accepted connection: TLS 1.3, ALPN h2, the
// certificate of creds, a required client certificate verified against creds.Roots whose SPIFFE ID must
// be in creds' trust domain. The verified peer ID is stored in *peer.
func serverTLSConfig(creds *Credentials, peer *spiffeid.ID) *tls.Config {
	td := creds.ID.TrustDomain()
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{alpnH2},
		Certificates:           []tls.Certificate{creds.Certificate},
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			ids, err := verifyChain(cs.PeerCertificates, creds.Roots, x509.ExtKeyUsageClientAuth)
			if err != nil {
				return err
			}
			id, err := acceptClientID(ids, td)
			if err != nil {
				return err
			}
			*peer = id
			return nil
		},
	}
}

// clientTLSConfig returns the TLS configuration for one outbound connection: TLS 1.3, ALPN h2, no SNI,
// no resumption, the certificate of creds, and a server chain verified against creds.Roots whose URI SANs
// must include one of expected (or, when expected is empty, any ID in creds' trust domain). The verified
// peer ID is stored in *peer.
func clientTLSConfig(creds *Credentials, expected []spiffeid.ID, peer *spiffeid.ID) *tls.Config {
	td := creds.ID.TrustDomain()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		NextProtos:   []string{alpnH2},
		Certificates: []tls.Certificate{creds.Certificate},
		// The server name is never checked: identity is the URI SAN, verified below. With no ServerName
		// Go sends no SNI, like ztunnel.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			ids, err := verifyChain(cs.PeerCertificates, creds.Roots, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			id, err := acceptServerID(ids, expected, td)
			if err != nil {
				return err
			}
			*peer = id
			return nil
		},
	}
}

// verifyChain verifies certs (leaf first, then intermediates) against roots for usage and returns the
// SPIFFE IDs among the leaf's URI SANs, in certificate order. Non-SPIFFE URIs are skipped.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) ([]spiffeid.ID, error) {
	if len(certs) == 0 {
		return nil, fmt.Errorf("verify peer: %w: no certificate", ErrPeerIdentity)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return nil, fmt.Errorf("verify peer chain: %w", err)
	}
	var ids []spiffeid.ID
	for _, u := range certs[0].URIs {
		id, err := spiffeid.FromURI(u)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// acceptClientID returns the first of ids in trust domain td, as a server requires of its clients.
func acceptClientID(ids []spiffeid.ID, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	for _, id := range ids {
		if id.MemberOf(td) {
			return id, nil
		}
	}
	return spiffeid.ID{}, fmt.Errorf("%w: client %v not in trust domain %q", ErrPeerIdentity, ids, td.Name())
}

// acceptServerID returns the first of ids that equals one of expected; with no expected IDs, the first
// of ids in trust domain td.
func acceptServerID(ids, expected []spiffeid.ID, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if len(expected) == 0 {
		return acceptClientID(ids, td)
	}
	for _, id := range ids {
		if slices.Contains(expected, id) {
			return id, nil
		}
	}
	return spiffeid.ID{}, fmt.Errorf("%w: server %v, expected one of %v", ErrPeerIdentity, ids, expected)
}
