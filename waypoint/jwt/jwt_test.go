package jwt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

func TestAuthenticate(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k", Algorithm: "ES256"}}})
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, set, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(set) }))
	defer srv.Close()
	now := time.Now()
	sign := func(k *ecdsa.PrivateKey, iss, aud string, exp time.Time, extra map[string]any) string {
		s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", "k"))
		tok, _ := josejwt.Signed(s).Claims(josejwt.Claims{Issuer: iss, Subject: "alice", Audience: josejwt.Audience{aud},
			Expiry: josejwt.NewNumericDate(exp)}).Claims(extra).Serialize()
		return tok
	}
	good := sign(key, "iss", "web", now.Add(time.Hour), map[string]any{"groups": []string{"a"}, "azp": "cli"})
	tests := []struct {
		name    string
		rule    model.JWTRule
		header  http.Header
		query   string
		wantErr error
		wantSub string
	}{
		{"inline JWKS", model.JWTRule{Issuer: "iss", JWKS: string(set)}, http.Header{"Authorization": {"Bearer " + good}}, "", nil, "iss/alice"},
		{"file JWKS", model.JWTRule{Issuer: "iss", JWKSURI: "file://" + file}, http.Header{"Authorization": {"Bearer " + good}}, "", nil, "iss/alice"},
		{"URL JWKS", model.JWTRule{Issuer: "iss", JWKSURI: srv.URL}, http.Header{"Authorization": {"Bearer " + good}}, "", nil, "iss/alice"},
		{"custom header with prefix", model.JWTRule{Issuer: "iss", JWKS: string(set), FromHeaders: []model.JWTHeader{{Name: "X-Jwt", Prefix: "T "}}},
			http.Header{"X-Jwt": {"T " + good}}, "", nil, "iss/alice"},
		{"query parameter", model.JWTRule{Issuer: "iss", JWKS: string(set)}, http.Header{}, "access_token=" + good, nil, "iss/alice"},
		{"no token passes", model.JWTRule{Issuer: "iss", JWKS: string(set)}, http.Header{}, "", nil, ""},
		{"wrong key", model.JWTRule{Issuer: "iss", JWKS: string(set)},
			http.Header{"Authorization": {"Bearer " + sign(other, "iss", "web", now.Add(time.Hour), nil)}}, "", ErrVerification, ""},
		{"expired", model.JWTRule{Issuer: "iss", JWKS: string(set)},
			http.Header{"Authorization": {"Bearer " + sign(key, "iss", "web", now.Add(-time.Hour), nil)}}, "", ErrExpired, ""},
		{"audience", model.JWTRule{Issuer: "iss", JWKS: string(set), Audiences: []string{"api"}},
			http.Header{"Authorization": {"Bearer " + good}}, "", ErrAudience, ""},
		{"unknown issuer", model.JWTRule{Issuer: "other", JWKS: string(set)},
			http.Header{"Authorization": {"Bearer " + good}}, "", ErrUnknownIssuer, ""},
		{"garbage", model.JWTRule{Issuer: "iss", JWKS: string(set)}, http.Header{"Authorization": {"Bearer a.b.c"}}, "", ErrVerification, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var a Authenticator
			r := httptest.NewRequest(http.MethodGet, "/?"+tc.query, nil)
			r.Header = tc.header
			res, err := a.Authenticate(context.Background(), r, []model.JWTRule{tc.rule}, now)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			sub := ""
			if res != nil {
				sub = res.Claims.Principal
				res.Apply(r)
				if r.Header.Get("Authorization") != "" || r.URL.Query().Get("access_token") != "" {
					t.Error("token not removed")
				}
				if res.Claims.Presenter != "cli" {
					t.Errorf("presenter %q", res.Claims.Presenter)
				}
			}
			if sub != tc.wantSub {
				t.Errorf("principal %q, want %q", sub, tc.wantSub)
			}
			if err != nil && Message(err) == "" {
				t.Error("no 401 message")
			}
		})
	}
}
