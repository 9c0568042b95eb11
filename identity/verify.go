package identity

import (
	"crypto/x509"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// VerifyServerChain is the client-side check of a peer that serves HBONE, as ztunnel's IdentityVerifier does:
// peer (leaf first, as in tls.ConnectionState.PeerCertificates) must chain to roots for server
// authentication, and the leaf must carry a URI SAN equal to one of expected (DNS names are ignored). It
// returns the matching identity. An empty expected list matches nothing.
func VerifyServerChain(peer []*x509.Certificate, roots *x509.CertPool, expected []spiffeid.ID) (spiffeid.ID, error) {
	if err := verifyChain(peer, roots, x509.ExtKeyUsageServerAuth); err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify server: %w", err)
	}
	for _, u := range peer[0].URIs {
		id, err := spiffeid.FromURI(u)
		if err != nil {
			continue
		}
		if slices.Contains(expected, id) {
			return id, nil
		}
	}
	return spiffeid.ID{}, fmt.Errorf("verify server: URI SANs %v match none of %v: %w", peer[0].URIs, expected, ErrIdentityMismatch)
}

// VerifyClientChain is the server-side check of an HBONE client, as ztunnel's TrustDomainVerifier does: peer
// must chain to roots for client authentication, and the leaf must carry a SPIFFE URI SAN in trustDomain (the
// server's own). It returns the first such identity.
func VerifyClientChain(peer []*x509.Certificate, roots *x509.CertPool, trustDomain spiffeid.TrustDomain) (spiffeid.ID, error) {
	if err := verifyChain(peer, roots, x509.ExtKeyUsageClientAuth); err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify client: %w", err)
	}
	for _, u := range peer[0].URIs {
		id, err := spiffeid.FromURI(u)
		if err != nil {
			continue
		}
		if id.MemberOf(trustDomain) {
			return id, nil
		}
	}
	return spiffeid.ID{}, fmt.Errorf("verify client: URI SANs %v not in trust domain %q: %w", peer[0].URIs, trustDomain, ErrTrustDomainMismatch)
}

// verifyChain checks peer[0] against roots with peer[1:] as intermediates, at the current time, for usage.
func verifyChain(peer []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) error {
	if len(peer) == 0 {
		return fmt.Errorf("no peer certificate: %w", ErrInvalidChain)
	}
	if roots == nil {
		return fmt.Errorf("no trust bundle: %w", ErrInvalidChain)
	}
	var inter *x509.CertPool
	if len(peer) > 1 {
		inter = x509.NewCertPool()
		for _, c := range peer[1:] {
			inter.AddCert(c)
		}
	}
	if _, err := peer[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidChain, err)
	}
	return nil
}
