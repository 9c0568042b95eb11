package identity

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"time"
)

// State is the availability of an identity's certificate, as reported by Manager.Snapshot. The names match
// ztunnel's admin output.
type State int

// States of a managed identity.
const (
	// StateInitializing: no certificate yet and no failed attempt.
	StateInitializing State = iota
	// StateAvailable: a valid certificate is held.
	StateAvailable
	// StateUnavailable: no valid certificate and the last attempt failed.
	StateUnavailable
)

// String returns "Initializing", "Available" or "Unavailable".
func (s State) String() string {
	switch s {
	case StateInitializing:
		return "Initializing"
	case StateAvailable:
		return "Available"
	case StateUnavailable:
		return "Unavailable"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

// MarshalText encodes s as its String form.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// CertInfo describes one public certificate for the admin API.
type CertInfo struct {
	PEM            string    `json:"pem"`
	SerialNumber   string    `json:"serialNumber"`
	ValidFrom      time.Time `json:"validFrom"`
	ExpirationTime time.Time `json:"expirationTime"`
}

// Status is the admin view of one managed identity. It carries no private key.
type Status struct {
	Identity string `json:"identity"`
	State    State  `json:"state"`
	// CertChain is the leaf followed by intermediates; RootCerts the trust bundle. Both are empty when no
	// certificate is held.
	CertChain []CertInfo `json:"cert_chain"`
	RootCerts []CertInfo `json:"root_certs"`
	// NextAttempt is when the next background issuance (renewal or retry) is scheduled; zero if none is.
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
	// Failures counts consecutive failed attempts; LastError is the latest failure.
	Failures  int    `json:"failures,omitempty"`
	LastError string `json:"lastError,omitempty"`
}

// Snapshot returns the status of every managed identity, sorted by identity.
func (m *Manager) Snapshot() []Status {
	now := time.Now()
	m.mu.Lock()
	out := make([]Status, 0, len(m.entries))
	for _, e := range m.entries {
		st := Status{Identity: e.id.String(), Failures: e.failures, CertChain: []CertInfo{}, RootCerts: []CertInfo{}}
		if e.timer != nil {
			st.NextAttempt = e.next
		}
		if e.lastErr != nil {
			st.LastError = e.lastErr.Error()
		}
		valid := e.cert != nil && e.cert.ValidAt(now)
		switch {
		case valid:
			st.State = StateAvailable
		case e.failures > 0 || e.cert != nil:
			st.State = StateUnavailable
		default:
			st.State = StateInitializing
		}
		if e.cert != nil {
			st.CertChain = certInfos(e.cert.Chain())
			st.RootCerts = certInfos(e.cert.Roots())
		}
		out = append(out, st)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Identity, b.Identity) })
	return out
}

func certInfos(certs []*x509.Certificate) []CertInfo {
	out := make([]CertInfo, len(certs))
	for i, c := range certs {
		out[i] = CertInfo{
			PEM:            string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})),
			SerialNumber:   c.SerialNumber.String(),
			ValidFrom:      c.NotBefore,
			ExpirationTime: c.NotAfter,
		}
	}
	return out
}
