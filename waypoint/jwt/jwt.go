package jwt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/policy"
)

// MaxTokenSize bounds the token read from a request (larger tokens fail verification).
const MaxTokenSize = 16 << 10

var algs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

// Authenticator verifies tokens and caches JWKS. It is safe for concurrent use.
type Authenticator struct {
	// Client fetches http(s) JWKS; nil uses a client with a 5 s timeout.
	Client *http.Client
	// Refresh is how long a fetched JWKS is used (default 20 min, Istio's); files are re-read after 1 s.
	Refresh time.Duration
	Log     *slog.Logger

	mu    sync.Mutex
	cache map[string]*keySet // guarded by mu; by URI or inline text
}

type keySet struct {
	mu      sync.Mutex
	keys    *jose.JSONWebKeySet // guarded by mu
	fetched time.Time           // guarded by mu
	err     error               // guarded by mu
}

// Result is a verified token.
type Result struct {
	Claims *policy.Claims
	Rule   *model.JWTRule
	// Header and Param locate the token (to remove it unless ForwardOriginalToken).
	Header, Param string
}

// Find returns the first token in r for any rule: its raw value, the rule locations it came from.
func Find(r *http.Request, rules []model.JWTRule) (token, header, param string) {
	seen := map[string]bool{}
	for i := range rules {
		hs := rules[i].FromHeaders
		ps := rules[i].FromParams
		if len(hs) == 0 && len(ps) == 0 {
			hs = []model.JWTHeader{{Name: "Authorization", Prefix: "Bearer "}}
			ps = []string{"access_token"}
		}
		for _, h := range hs {
			key := "h:" + strings.ToLower(h.Name) + "|" + h.Prefix
			if seen[key] {
				continue
			}
			seen[key] = true
			if v := r.Header.Get(h.Name); v != "" {
				if t, ok := strings.CutPrefix(v, h.Prefix); ok && t != "" {
					return strings.TrimSpace(t), h.Name, ""
				}
			}
		}
		for _, p := range ps {
			if v := r.URL.Query().Get(p); v != "" {
				return v, "", p
			}
		}
	}
	return "", "", ""
}

// Authenticate verifies the token in r against rules. It returns (nil, nil) when r carries no token.
func (a *Authenticator) Authenticate(ctx context.Context, r *http.Request, rules []model.JWTRule, now time.Time) (*Result, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	raw, header, param := Find(r, rules)
	if raw == "" {
		return nil, nil
	}
	if len(raw) > MaxTokenSize {
		return nil, ErrVerification
	}
	tok, err := josejwt.ParseSigned(raw, algs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrVerification, err)
	}
	var unverified josejwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrVerification, err)
	}
	var rule *model.JWTRule
	for i := range rules {
		if rules[i].Issuer == unverified.Issuer {
			rule = &rules[i]
			break
		}
	}
	if rule == nil {
		return nil, ErrUnknownIssuer
	}
	keys, err := a.keys(ctx, rule, now)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrJWKS, err)
	}
	var std josejwt.Claims
	raw2 := map[string]any{}
	verified := false
	kid := ""
	if len(tok.Headers) > 0 {
		kid = tok.Headers[0].KeyID
	}
	cands := keys.Keys
	if kid != "" {
		cands = keys.Key(kid)
	}
	for _, k := range cands {
		if err := tok.Claims(k.Public().Key, &std, &raw2); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, ErrVerification
	}
	if err := std.ValidateWithLeeway(josejwt.Expected{Issuer: rule.Issuer, Time: now}, time.Minute); err != nil {
		if errors.Is(err, josejwt.ErrExpired) {
			return nil, ErrExpired
		}
		return nil, fmt.Errorf("%w: %w", ErrVerification, err)
	}
	if len(rule.Audiences) > 0 {
		ok := false
		for _, want := range rule.Audiences {
			if std.Audience.Contains(want) {
				ok = true
				break
			}
		}
		if !ok {
			return nil, ErrAudience
		}
	}
	c := &policy.Claims{Principal: std.Issuer + "/" + std.Subject, Audiences: std.Audience, Raw: raw2}
	if azp, ok := raw2["azp"].(string); ok {
		c.Presenter = azp
	}
	return &Result{Claims: c, Rule: rule, Header: header, Param: param}, nil
}

// Apply removes the token from r unless the rule forwards it, and copies claims to headers.
func (res *Result) Apply(r *http.Request) {
	if !res.Rule.ForwardOriginalToken {
		if res.Header != "" {
			r.Header.Del(res.Header)
		}
		if res.Param != "" {
			q := r.URL.Query()
			q.Del(res.Param)
			r.URL.RawQuery = q.Encode()
		}
	}
	for _, h := range res.Rule.ClaimHeaders {
		vals := policy.ClaimValues(res.Claims.Raw, strings.Split(h.Value, "."))
		if len(vals) > 0 {
			r.Header.Set(h.Name, strings.Join(vals, ","))
		}
	}
}

func (a *Authenticator) keys(ctx context.Context, rule *model.JWTRule, now time.Time) (*jose.JSONWebKeySet, error) {
	src := rule.JWKSURI
	if src == "" {
		src = "inline:" + rule.JWKS
	}
	a.mu.Lock()
	if a.cache == nil {
		a.cache = map[string]*keySet{}
	}
	ks := a.cache[src]
	if ks == nil {
		ks = &keySet{}
		a.cache[src] = ks
	}
	a.mu.Unlock()
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ttl := a.Refresh
	if ttl == 0 {
		ttl = 20 * time.Minute
	}
	switch {
	case rule.JWKSURI == "":
		ttl = 1<<63 - 1
	case strings.HasPrefix(rule.JWKSURI, "file://"):
		ttl = time.Second
	}
	if ks.keys != nil && now.Sub(ks.fetched) < ttl {
		return ks.keys, nil
	}
	if ks.err != nil && now.Sub(ks.fetched) < time.Second {
		return nil, ks.err // do not hammer a failing source
	}
	data, err := a.fetch(ctx, rule)
	ks.fetched = now
	if err == nil {
		var set jose.JSONWebKeySet
		if err = json.Unmarshal(data, &set); err == nil && len(set.Keys) == 0 {
			err = errors.New("no keys")
		}
		if err == nil {
			ks.keys, ks.err = &set, nil
			return ks.keys, nil
		}
	}
	ks.err = err
	if ks.keys != nil {
		if a.Log != nil {
			a.Log.Warn("JWKS refresh failed; keeping the previous keys", "jwks", rule.JWKSURI, "err", err)
		}
		return ks.keys, nil
	}
	return nil, err
}

func (a *Authenticator) fetch(ctx context.Context, rule *model.JWTRule) ([]byte, error) {
	if rule.JWKSURI == "" {
		return []byte(rule.JWKS), nil
	}
	u, err := url.Parse(rule.JWKSURI)
	if err != nil {
		return nil, fmt.Errorf("parse JWKS URI: %w", err)
	}
	if u.Scheme == "file" {
		b, err := os.ReadFile(u.Path)
		if err != nil {
			return nil, fmt.Errorf("read JWKS: %w", err)
		}
		return b, nil
	}
	c := a.Client
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rule.JWKSURI, nil)
	if err != nil {
		return nil, fmt.Errorf("build JWKS request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS: status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read JWKS: %w", err)
	}
	return b, nil
}
