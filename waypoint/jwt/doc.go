// Package jwt implements RequestAuthentication for the L7 waypoint: it finds a JWT in the configured
// headers or query parameters (default "Authorization: Bearer" and access_token), verifies it with the
// issuer's JWKS (inline, from a file:// path or an http(s):// URL, cached), checks exp, nbf and the
// audiences, and returns the claims that feed authorization. As in Istio, a request without a token
// passes (with no request principal); a request with an invalid token is rejected (401).
//
// The JWKS fetch is its only I/O. It must not import the engine, agent/ or config/.
package jwt
