package engine

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

// TestEngineJWT (issue 14 item 6): the headers outputClaimToHeaders names reach the backend only with
// the verified token's claims, never with a client's values; a JWKS file over 1 MiB is refused (401).
func TestEngineJWT(t *testing.T) {
	tu.CheckGoroutines(t)
	var mu sync.Mutex
	var last http.Header
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		last = r.Header.Clone()
		mu.Unlock()
		io.WriteString(w, "ok")
	}))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k", Algorithm: "ES256"}}})
	dir := t.TempDir()
	small, big := filepath.Join(dir, "jwks.json"), filepath.Join(dir, "big.json")
	os.WriteFile(small, set, 0o600)
	os.WriteFile(big, append(append([]byte{}, set...), bytes.Repeat([]byte(" "), 1<<20)...), 0o600)
	sign := func(claims map[string]any) string {
		s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k"))
		tok, _ := josejwt.Signed(s).Claims(josejwt.Claims{Issuer: "iss", Subject: "alice",
			Expiry: josejwt.NewNumericDate(time.Now().Add(time.Hour))}).Claims(claims).Serialize()
		return tok
	}
	configure := func(jwks string) {
		h.eng.Update(&model.Config{JWT: []*model.JWTPolicy{{Namespace: "app", Name: "jwt",
			Targets: []model.TargetRef{{Kind: model.KindService, Namespace: "app", Name: "web"}},
			Rules:   []model.JWTRule{{Issuer: "iss", JWKSURI: "file://" + jwks, ClaimHeaders: []model.Header{{Name: "X-Jwt-Group", Value: "group"}}}}}}})
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	do := func(t *testing.T, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+h.addr+"/", nil)
		req.Host = "web"
		req.Header.Set("X-Jwt-Group", "admins") // injected by the client
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		mu.Lock()
		last = nil
		mu.Unlock()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		mu.Lock()
		defer mu.Unlock()
		if last == nil {
			return resp.StatusCode, ""
		}
		return resp.StatusCode, last.Get("X-Jwt-Group")
	}

	configure(small)
	for _, tc := range []struct{ name, token, want string }{
		{"no token", "", ""},
		{"token without the claim", sign(nil), ""},
		{"token with the claim", sign(map[string]any{"group": "users"}), "users"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, got := do(t, tc.token)
			if code != http.StatusOK || got != tc.want {
				t.Errorf("%d, backend saw X-Jwt-Group %q; want 200 and %q", code, got, tc.want)
			}
		})
	}
	t.Run("JWKS file over 1 MiB", func(t *testing.T) {
		configure(big)
		if code, _ := do(t, sign(map[string]any{"group": "users"})); code != http.StatusUnauthorized {
			t.Errorf("token checked against an oversized JWKS: %d, want 401", code)
		}
	})
}
