package jwt

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

func TestAuthenticate(t *testing.T) {
	tu.CheckGoroutines(t)
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
			a := New(Options{})
			defer a.Close()
			rules := []model.JWTRule{tc.rule}
			a.Sync(context.Background(), rules)
			r := httptest.NewRequest(http.MethodGet, "/?"+tc.query, nil)
			r.Header = tc.header
			res, err := a.Authenticate(context.Background(), r, rules, now)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			sub := ""
			if res != nil {
				sub = res.Claims.Principal
				Apply(r, rules, res)
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

// testKey returns a signing key, its JWKS document and a signer of tokens for issuer "iss".
func testKey(t *testing.T) ([]byte, func(claims map[string]any) string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k", Algorithm: "ES256"}}})
	sign := func(claims map[string]any) string {
		s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k"))
		tok, _ := josejwt.Signed(s).Claims(josejwt.Claims{Issuer: "iss", Subject: "alice",
			Expiry: josejwt.NewNumericDate(time.Now().Add(time.Hour))}).Claims(claims).Serialize()
		return tok
	}
	return set, sign
}

// TestApplyClaimHeaders: headers named by outputClaimToHeaders come only from a verified token's claims;
// a client's values are removed whether the token is missing, lacks the claim, or carries it (issue 14
// item 6).
func TestApplyClaimHeaders(t *testing.T) {
	set, sign := testKey(t)
	rules := []model.JWTRule{{Issuer: "iss", JWKS: string(set), ClaimHeaders: []model.Header{{Name: "X-Group", Value: "group"},
		{Name: "X-Tenant", Value: "org.tenant"}}}}
	tests := []struct {
		name            string
		token           string
		wantGroup, want string // X-Group and X-Tenant at the backend
	}{
		{"no token", "", "", ""},
		{"token without the claims", sign(nil), "", ""},
		{"token with the claims", sign(map[string]any{"group": "users", "org": map[string]any{"tenant": "t1"}}), "users", "t1"},
	}
	a := New(Options{})
	defer a.Close()
	a.Sync(context.Background(), rules)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("X-Group", "admins") // injected by the client
			r.Header.Add("x-tenant", "t0")
			if tc.token != "" {
				r.Header.Set("Authorization", "Bearer "+tc.token)
			}
			res, err := a.Authenticate(context.Background(), r, rules, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			Apply(r, rules, res)
			if got := r.Header.Values("X-Group"); strings.Join(got, ",") != tc.wantGroup {
				t.Errorf("X-Group = %q, want %q", got, tc.wantGroup)
			}
			if got := r.Header.Values("X-Tenant"); strings.Join(got, ",") != tc.want {
				t.Errorf("X-Tenant = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestJWKSSizeLimit: a JWKS larger than MaxJWKSSize (here a valid one padded with whitespace) is
// refused with ErrJWKSTooLarge, from a file, over http and inline; its issuer's tokens get ErrJWKS.
func TestJWKSSizeLimit(t *testing.T) {
	tu.CheckGoroutines(t)
	set, sign := testKey(t)
	big := append(append([]byte{}, set...), bytes.Repeat([]byte(" "), MaxJWKSSize)...)
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, big, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(big) }))
	defer srv.Close()
	if _, err := ParseJWKS(big); !errors.Is(err, ErrJWKSTooLarge) {
		t.Errorf("ParseJWKS of %d bytes: %v", len(big), err)
	}
	if _, err := ParseJWKS(set); err != nil {
		t.Errorf("ParseJWKS of a small set: %v", err)
	}
	var logs bytes.Buffer
	a := New(Options{Log: slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))})
	defer a.Close()
	for name, rule := range map[string]model.JWTRule{
		"file":   {Issuer: "iss", JWKSURI: "file://" + file},
		"http":   {Issuer: "iss", JWKSURI: srv.URL},
		"inline": {Issuer: "iss", JWKS: string(big)},
	} {
		t.Run(name, func(t *testing.T) {
			rules := []model.JWTRule{rule}
			a.Sync(context.Background(), rules)
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("Authorization", "Bearer "+sign(nil))
			_, err := a.Authenticate(context.Background(), r, rules, time.Now())
			if !errors.Is(err, ErrJWKS) || !errors.Is(err, ErrJWKSTooLarge) {
				t.Errorf("Authenticate = %v, want ErrJWKS for a too large JWKS", err)
			}
		})
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestJWKSFetchedOffTheRequestPath: requests read the last good keys while a refresh is stuck at the
// JWKS server, and a source whose first fetch fails rejects tokens (ErrJWKS) instead of holding them.
func TestJWKSFetchedOffTheRequestPath(t *testing.T) {
	tu.CheckGoroutines(t)
	set, sign := testKey(t)
	var fetches atomic.Int64
	stuck := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fetches.Add(1) == 1 {
			w.Write(set)
			return
		}
		select { // every refresh after the first hangs until released
		case stuck <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.Error(w, "gone", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()

	a := New(Options{Refresh: time.Millisecond, Client: &http.Client{}})
	defer a.Close()
	rules := []model.JWTRule{{Issuer: "iss", JWKSURI: srv.URL}}
	a.Sync(context.Background(), rules)
	req := func() *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", "Bearer "+sign(nil))
		return r
	}
	// Where fetching is done on the request path, a second request triggers the refresh; in the
	// background it happens on its own.
	triggered := make(chan struct{})
	go func() {
		defer close(triggered)
		a.Authenticate(context.Background(), req(), rules, time.Now())
		a.Authenticate(context.Background(), req(), rules, time.Now().Add(time.Second))
	}()
	<-stuck
	// The refresh is stuck at the server now. Should the request wait for it, the watchdog releases the
	// server and the request returns only after that: it must return first.
	var released atomic.Bool
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			released.Store(true)
			unblock()
		}
	}()
	res, err := a.Authenticate(context.Background(), req(), rules, time.Now())
	close(done)
	if err != nil || res == nil {
		t.Fatalf("Authenticate during a stuck refresh = %v, %v; want the last good keys", res, err)
	}
	if released.Load() {
		t.Error("the request waited for the JWKS refresh")
	}
	unblock()
	<-triggered

	// A source that never answered successfully: tokens are rejected with ErrJWKS.
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	defer down.Close()
	rules = []model.JWTRule{{Issuer: "iss", JWKSURI: down.URL}}
	a.Sync(context.Background(), rules)
	if _, err := a.Authenticate(context.Background(), req(), rules, time.Now()); !errors.Is(err, ErrJWKS) || Message(err) != "Jwks remote fetch is failed" {
		t.Errorf("Authenticate with a failing JWKS = %v, want ErrJWKS", err)
	}
}
