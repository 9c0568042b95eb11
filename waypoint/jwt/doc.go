// Package jwt implements RequestAuthentication for the L7 waypoint: it finds a JWT in the configured
// headers or query parameters (default "Authorization: Bearer" and access_token), verifies it with the
// issuer's JWKS (inline, from a file:// path or an http(s):// URL), checks exp, nbf and the audiences,
// and returns the claims that feed authorization. As in Istio, a request without a token passes (with
// no request principal); a request with an invalid token is rejected (401). Apply removes the client's
// values of every outputClaimToHeaders header before it sets them from a verified token.
//
// JWKS documents are bounded (MaxJWKSSize, 1 MiB) and fetched off the request path: Sync starts a
// refresher goroutine per remote source (owned by the Authenticator, stopped by Close) and waits for
// each new source's first fetch; requests read the last good key set and never fetch or wait, and a
// source with none fails its tokens with ErrJWKS. Verify is the pure part (fuzzed by FuzzVerify).
//
// The JWKS fetch is its only I/O. It must not import the engine, agent/ or config/.
package jwt
