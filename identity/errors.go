package identity

import "errors"

// Sentinel errors; callers test them with errors.Is.
var (
	// ErrClosed is returned by a Manager or Issuer after Close.
	ErrClosed = errors.New("identity: closed")
	// ErrNotWorkloadID reports a SPIFFE ID that is not of the form spiffe://TD/ns/NS/sa/SA.
	ErrNotWorkloadID = errors.New("identity: not a workload identity")
	// ErrInvalidChain reports a certificate chain that is empty, malformed, or does not belong to its key or roots.
	ErrInvalidChain = errors.New("identity: invalid certificate chain")
	// ErrShortChain reports a CA response without a root element (fewer than two chain elements).
	ErrShortChain = errors.New("identity: certificate chain lacks a root")
	// ErrIdentityMismatch reports a certificate whose SPIFFE ID is not the one requested or expected.
	ErrIdentityMismatch = errors.New("identity: certificate identity mismatch")
	// ErrTrustDomainMismatch reports a peer from another trust domain.
	ErrTrustDomainMismatch = errors.New("identity: trust domain mismatch")
	// ErrExpired reports a certificate that is not valid at the time of use.
	ErrExpired = errors.New("identity: certificate expired")
	// ErrKeyPermissions reports a CA key file readable by group or others.
	ErrKeyPermissions = errors.New("identity: key file permissions too open")
	// ErrNoSVID reports that the Workload API does not (yet) offer an SVID for the requested identity.
	ErrNoSVID = errors.New("identity: no SVID for identity from workload API")
)

// ErrUnavailable reports that an identity has no valid certificate and the last attempt to get one failed;
// the Manager retries in the background and Fetch fails fast until the retry is due.
var ErrUnavailable = errors.New("identity: certificate unavailable")

// errNotFresher is the failure recorded when an issuer answers a renewal with a certificate that is not newer
// than one already due for renewal (a Workload API that has not rotated yet).
var errNotFresher = errors.New("identity: issuer returned no newer certificate")
