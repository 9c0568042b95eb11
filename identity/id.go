package identity

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults that Istio applies to workloads with an empty trust domain or service account.
const (
	DefaultTrustDomain    = "cluster.local"
	DefaultServiceAccount = "default"
)

// WorkloadID returns spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>. An empty trustDomain means
// DefaultTrustDomain and an empty serviceAccount DefaultServiceAccount; namespace must not be empty.
func WorkloadID(trustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}
	if serviceAccount == "" {
		serviceAccount = DefaultServiceAccount
	}
	if namespace == "" {
		return spiffeid.ID{}, fmt.Errorf("build workload id: empty namespace: %w", ErrNotWorkloadID)
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("build workload id: %w", err)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("build workload id: %w", err)
	}
	return id, nil
}

// ParseWorkloadID splits a workload identity into namespace and service account. Like ztunnel it accepts
// exactly the path /ns/<namespace>/sa/<serviceAccount> and reports ErrNotWorkloadID for anything else.
func ParseWorkloadID(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	p := id.Path()
	parts := strings.Split(p, "/")
	// "/ns/X/sa/Y" splits into ["", "ns", "X", "sa", "Y"].
	if id.IsZero() || len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[2] == "" || parts[4] == "" {
		return "", "", fmt.Errorf("parse workload id %q: %w", id.String(), ErrNotWorkloadID)
	}
	return parts[2], parts[4], nil
}

// ParseWorkloadIDString parses s as a SPIFFE ID and then as a workload identity (see ParseWorkloadID).
func ParseWorkloadIDString(s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("parse workload id %q: %w: %w", s, ErrNotWorkloadID, err)
	}
	if _, _, err := ParseWorkloadID(id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}
