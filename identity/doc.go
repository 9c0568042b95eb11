// Package identity issues, caches and verifies the SPIFFE X.509 identities Ambit's processes present and
// check on HBONE connections: the node agent's workloads (node impersonation) and a waypoint's own.
// NewIssuer chooses the certificate source from IssuerOptions, the same way for both processes.
//
// The Manager holds one certificate per workload identity needed on the node. It fetches on demand (Fetch)
// or as a low-priority warm-up (Prefetch), shares in-flight requests for the same identity, renews every
// certificate at half-life with exponential backoff on failure, keeps serving a still-valid certificate while
// renewal fails, never serves an expired one, and drops an identity on Forget.
//
// Certificates come from an Issuer. Three are provided:
//   - LocalCA: a self-managed ECDSA P-256 root kept on disk, for single-machine use and tests;
//   - IstiodCA: Istio's CA protocol (istio.v1.auth.IstioCertificateService/CreateCertificate over gRPC),
//     with node-proxy impersonation as ztunnel does it;
//   - WorkloadAPI: the SPIFFE Workload API (for example a SPIRE agent) through go-spiffe's workloadapi client.
//
// The TLS helpers (VerifyServerChain, VerifyClientChain) implement ztunnel's peer checks: the chain against the
// trust bundle, then an exact SPIFFE ID match on the client side and a trust-domain match on the server side.
//
// It must not import agent/, waypoint/ or hbone/ (hbone takes credentials through callbacks).
package identity
