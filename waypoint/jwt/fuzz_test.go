package jwt

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

// FuzzVerify feeds peer-controlled bytes to the JWT path: a JWKS document (from a file or a server the
// mesh does not control) and a token (from any client). Parsing and verification must never panic; a
// token verifies only with a parsed key set, and a verified token yields claims that Apply can copy.
// The committed corpus (testdata/fuzz/FuzzVerify) holds valid ES256 and RS256 tokens with their key
// sets, a key set of two keys with a token naming none, a wrong key, an empty set, garbage and alg none.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(`{"keys":[]}`), "a.b.c")
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, jwks []byte, token string) {
		set, perr := ParseJWKS(jwks)
		if perr == nil && (set == nil || len(set.Keys) == 0) {
			t.Fatalf("ParseJWKS accepted a set without keys: %v", set)
		}
		rules := []model.JWTRule{{Issuer: "iss", JWKS: string(jwks), Audiences: []string{"web"},
			ClaimHeaders: []model.Header{{Name: "X-Claim", Value: "a.b"}, {Name: "X-Scope", Value: "scope"}}}}
		keys := func(*model.JWTRule) (*jose.JSONWebKeySet, error) { return set, perr }
		res, err := Verify(token, rules, keys, now)
		if err != nil {
			if Message(err) == "" {
				t.Fatalf("error without a 401 message: %v", err)
			}
			return
		}
		if perr != nil {
			t.Fatalf("verified a token with no key set (%v)", perr)
		}
		if res == nil || res.Claims == nil || res.Rule == nil {
			t.Fatalf("verified without a result: %+v", res)
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("X-Claim", "injected")
		Apply(r, rules, res)
		if r.Header.Get("X-Claim") == "injected" {
			t.Fatal("a client's claim header survived Apply")
		}
	})
}
