package jwt

import "errors"

// Errors returned by Authenticate; each means 401.
var (
	ErrUnknownIssuer = errors.New("jwt issuer is not configured")
	ErrVerification  = errors.New("jwt verification fails")
	ErrExpired       = errors.New("jwt is expired")
	ErrAudience      = errors.New("audiences in jwt are not allowed")
	ErrJWKS          = errors.New("jwks fetch failed")
	// ErrJWKSTooLarge reports a JWKS document larger than MaxJWKSSize (a fetch failure: ErrJWKS).
	ErrJWKSTooLarge = errors.New("JWKS document larger than 1 MiB")
)

// Message returns the 401 body Envoy's jwt_authn filter sends for err.
func Message(err error) string {
	switch {
	case errors.Is(err, ErrUnknownIssuer):
		return "Jwt issuer is not configured"
	case errors.Is(err, ErrExpired):
		return "Jwt is expired"
	case errors.Is(err, ErrAudience):
		return "Audiences in Jwt are not allowed"
	case errors.Is(err, ErrJWKS):
		return "Jwks remote fetch is failed"
	}
	return "Jwt verification fails"
}
