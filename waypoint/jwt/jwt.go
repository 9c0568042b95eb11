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
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/policy"
)

// MaxTokenSize bounds the token read from a request (larger tokens fail verification).
const MaxTokenSize = 16 << 10

// MaxJWKSSize bounds a JWKS document, inline, from a file or over http(s) (ErrJWKSTooLarge beyond it).
const MaxJWKSSize = 1 << 20

// Defaults of Options.
const (
	DefaultRefresh   = 20 * time.Minute // Istio's JWKS refresh interval
	DefaultFilePoll  = time.Second
	DefaultTimeout   = 5 * time.Second
	maxRetryInterval = 30 * time.Second
)

var algs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

// Options configure an Authenticator.
type Options struct {
	// Client fetches http(s) JWKS; nil uses a client with DefaultTimeout.
	Client *http.Client
	// Refresh is how often an http(s) JWKS is fetched again (default DefaultRefresh); FilePoll how often
	// a file:// JWKS is checked for changes (default DefaultFilePoll). A failed fetch is retried sooner,
	// from 1 s doubling to 30 s.
	Refresh, FilePoll time.Duration
	Log               *slog.Logger
}

// Authenticator verifies tokens against JWKS key sets it keeps fresh in the background: each remote
// (file or http) JWKS has a refresher goroutine, owned by the Authenticator and stopped by Close.
// Requests never fetch and never wait for a fetch: they read the last good key set of their source,
// and a source that has none (its first fetch failed) fails every token with ErrJWKS (401), as Envoy
// does when it has no JWKS. It is safe for concurrent use.
type Authenticator struct {
	opts   Options
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	sources map[string]*keySet // guarded by mu; by JWKS URI or "inline:" + the JWKS text
	closed  bool               // guarded by mu
}

// keySet is one JWKS source and its last good keys.
type keySet struct {
	uri    string // "" for inline
	keys   atomic.Pointer[jose.JSONWebKeySet]
	err    atomic.Pointer[error] // the last fetch's failure; nil after a success
	ready  chan struct{}         // closed once the first fetch attempt has ended
	cancel context.CancelFunc    // stops the refresher
}

// New returns an Authenticator with no sources. Call Sync with the rules in use and Close at the end.
func New(opts Options) *Authenticator {
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.FilePoll <= 0 {
		opts.FilePoll = DefaultFilePoll
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: DefaultTimeout}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Authenticator{opts: opts, ctx: ctx, cancel: cancel, sources: map[string]*keySet{}}
}

// Close stops every refresher and waits for them.
func (a *Authenticator) Close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.wg.Wait()
}

func sourceKey(rule *model.JWTRule) string {
	if rule.JWKSURI != "" {
		return rule.JWKSURI
	}
	return "inline:" + rule.JWKS
}

// Sync makes the JWKS sources of rules the ones kept fresh: new sources start (an inline JWKS is
// parsed at once), sources no rule names any more stop. It returns once every new source's first fetch
// has ended (each bounded by the client timeout), so that a configuration is served only after its
// keys were tried, as istiod resolves JWKS before it pushes a configuration; a source that failed
// keeps retrying in the background.
func (a *Authenticator) Sync(ctx context.Context, rules []model.JWTRule) {
	want := map[string]*model.JWTRule{}
	for i := range rules {
		want[sourceKey(&rules[i])] = &rules[i]
	}
	var started []*keySet
	a.mu.Lock()
	for k, ks := range a.sources {
		if want[k] == nil {
			delete(a.sources, k)
			if ks.cancel != nil {
				ks.cancel()
			}
		}
	}
	for k, rule := range want {
		if a.sources[k] == nil {
			if ks := a.startLocked(k, rule); ks != nil {
				started = append(started, ks)
			}
		}
	}
	a.mu.Unlock()
	for _, ks := range started {
		select {
		case <-ks.ready:
		case <-ctx.Done():
			return
		}
	}
}

// startLocked adds the source k of rule (a.mu held): an inline JWKS is parsed now, a remote one gets
// a refresher goroutine. It returns nil once the Authenticator is closed.
func (a *Authenticator) startLocked(k string, rule *model.JWTRule) *keySet {
	if a.closed {
		return nil
	}
	ks := &keySet{uri: rule.JWKSURI, ready: make(chan struct{})}
	a.sources[k] = ks
	if ks.uri == "" {
		set, err := ParseJWKS([]byte(rule.JWKS))
		ks.store(set, err)
		close(ks.ready)
		return ks
	}
	ctx, cancel := context.WithCancel(a.ctx)
	ks.cancel = cancel
	a.wg.Go(func() { a.refresh(ctx, ks) })
	return ks
}

func (ks *keySet) store(set *jose.JSONWebKeySet, err error) {
	if err != nil {
		ks.err.Store(&err)
		return
	}
	ks.keys.Store(set)
	ks.err.Store(nil)
}

// lastErr is the last fetch's failure, or a placeholder before the first attempt has ended.
func (ks *keySet) lastErr() error {
	if p := ks.err.Load(); p != nil {
		return *p
	}
	return errors.New("JWKS not fetched yet")
}

// refresh keeps ks fresh until ctx ends: it fetches at once, then every Refresh (FilePoll for a file),
// retrying a failure sooner; a failed refresh keeps the previous keys.
func (a *Authenticator) refresh(ctx context.Context, ks *keySet) {
	every := a.opts.Refresh
	if strings.HasPrefix(ks.uri, "file://") {
		every = a.opts.FilePoll
	}
	retry := time.Second
	var last fileVersion
	logged := "" // the failure last logged: a source failing the same way is logged once
	t := time.NewTimer(0)
	defer t.Stop()
	first := true
	for {
		select {
		case <-ctx.Done():
			if first {
				close(ks.ready)
			}
			return
		case <-t.C:
		}
		next := every
		set, version, err := a.load(ctx, ks.uri, last)
		switch {
		case err == nil && set == nil: // file unchanged
		case err == nil:
			ks.store(set, nil)
			last, retry, logged = version, time.Second, ""
		case ctx.Err() != nil:
		default:
			ks.store(nil, err)
			switch {
			case err.Error() == logged:
			case ks.keys.Load() != nil:
				a.opts.Log.Warn("JWKS refresh failed; keeping the previous keys", "jwks", ks.uri, "err", err)
			default:
				a.opts.Log.Warn("JWKS fetch failed; tokens of its issuer are rejected until it succeeds", "jwks", ks.uri, "err", err)
			}
			logged = err.Error()
			next = min(retry, every)
			retry = min(2*retry, maxRetryInterval)
		}
		if first {
			first = false
			close(ks.ready)
		}
		t.Reset(next)
	}
}

// fileVersion identifies a JWKS file's content cheaply (size and modification time).
type fileVersion struct {
	size int64
	mod  time.Time
}

// load fetches and parses the JWKS at uri. For a file whose version is still last it returns (nil,
// last, nil): nothing changed.
func (a *Authenticator) load(ctx context.Context, uri string, last fileVersion) (*jose.JSONWebKeySet, fileVersion, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, last, fmt.Errorf("parse JWKS URI: %w", err)
	}
	if u.Scheme == "file" {
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, last, fmt.Errorf("read JWKS: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, last, fmt.Errorf("read JWKS: %w", err)
		}
		v := fileVersion{size: st.Size(), mod: st.ModTime()}
		if v == last && !last.mod.IsZero() {
			return nil, last, nil
		}
		b, err := readLimited(f, uri)
		if err != nil {
			return nil, last, err
		}
		set, err := ParseJWKS(b)
		return set, v, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, last, fmt.Errorf("build JWKS request: %w", err)
	}
	resp, err := a.opts.Client.Do(req)
	if err != nil {
		return nil, last, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, last, fmt.Errorf("fetch JWKS %s: status %d", uri, resp.StatusCode)
	}
	b, err := readLimited(resp.Body, uri)
	if err != nil {
		return nil, last, err
	}
	set, err := ParseJWKS(b)
	return set, last, err
}

// readLimited reads at most MaxJWKSSize bytes of r; a longer document is ErrJWKSTooLarge.
func readLimited(r io.Reader, uri string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("read JWKS %s: %w", uri, err)
	}
	if len(b) > MaxJWKSSize {
		return nil, fmt.Errorf("read JWKS %s: %w", uri, ErrJWKSTooLarge)
	}
	return b, nil
}

// ParseJWKS parses a JWKS document of at most MaxJWKSSize bytes with at least one key.
func ParseJWKS(b []byte) (*jose.JSONWebKeySet, error) {
	if len(b) > MaxJWKSSize {
		return nil, ErrJWKSTooLarge
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("parse JWKS: no keys")
	}
	return &set, nil
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

// Authenticate verifies the token in r against rules with the last good keys of each rule's JWKS. It
// returns (nil, nil) when r carries no token. It never fetches: a source not synced yet is started in
// the background and, like one whose fetches failed, fails the token with ErrJWKS.
func (a *Authenticator) Authenticate(_ context.Context, r *http.Request, rules []model.JWTRule, now time.Time) (*Result, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	raw, header, param := Find(r, rules)
	if raw == "" {
		return nil, nil
	}
	res, err := Verify(raw, rules, a.keys, now)
	if err != nil {
		return nil, err
	}
	res.Header, res.Param = header, param
	return res, nil
}

// keys returns the last good key set of rule's source.
func (a *Authenticator) keys(rule *model.JWTRule) (*jose.JSONWebKeySet, error) {
	k := sourceKey(rule)
	a.mu.Lock()
	ks := a.sources[k]
	if ks == nil {
		ks = a.startLocked(k, rule)
	}
	a.mu.Unlock()
	if ks == nil {
		return nil, errors.New("authenticator closed")
	}
	if set := ks.keys.Load(); set != nil {
		return set, nil
	}
	return nil, ks.lastErr()
}

// Verify checks the token raw against rules: the rule of its issuer, a signature by one of the keys
// keys returns for that rule (the one of the token's kid when it names one), exp and nbf with a minute
// of leeway, and the rule's audiences. It does no I/O but through keys.
func Verify(raw string, rules []model.JWTRule, keys func(*model.JWTRule) (*jose.JSONWebKeySet, error), now time.Time) (*Result, error) {
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
	set, err := keys(rule)
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
	cands := set.Keys
	if kid != "" {
		cands = set.Key(kid)
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
	return &Result{Claims: c, Rule: rule}, nil
}

// Apply prepares r for the backend after authentication with rules: it always removes the headers any
// rule's outputClaimToHeaders names (so a client can never supply them), then, for a verified token
// (res not nil), removes the token unless the rule forwards it and sets the claim headers from the
// token's claims (a claim the token lacks leaves its header absent).
func Apply(r *http.Request, rules []model.JWTRule, res *Result) {
	for i := range rules {
		for _, h := range rules[i].ClaimHeaders {
			r.Header.Del(h.Name)
		}
	}
	if res == nil {
		return
	}
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
