package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/test/testutil"
)

const istiodName = "istiod.istio-system.svc"

// fakeIstiod is an in-process IstioCertificateService that signs with a real LocalCA and enforces istiod's
// request contract: bearer token, cluster id, and (when impersonating) ImpersonatedIdentity equal to the CSR's
// SAN. It records every request for inspection.
type fakeIstiod struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca            *LocalCA
	intermediates []*x509.Certificate // returned between leaf and roots
	roots         []*x509.Certificate // returned as the last element
	token         string
	clusterID     string
	// respond, if set, replaces the chain sent back for a signed leaf.
	respond func(leaf *x509.Certificate) []string

	mu   sync.Mutex
	reqs []fakeReq
}

type fakeReq struct {
	md  metadata.MD
	req *pb.IstioCertificateRequest
	csr *x509.CertificateRequest
}

func (f *fakeIstiod) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	csr, err := parseCSRPEM(req.GetCsr())
	f.mu.Lock()
	f.reqs = append(f.reqs, fakeReq{md: md, req: req, csr: csr})
	f.mu.Unlock()
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad csr: %v", err)
	}
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+f.token {
		return nil, status.Error(codes.Unauthenticated, "authentication failure")
	}
	if got := md.Get("clusterid"); len(got) != 1 || got[0] != f.clusterID {
		return nil, status.Errorf(codes.Unauthenticated, "unknown cluster %v", got)
	}
	if imp, ok := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]; ok {
		if len(csr.URIs) != 1 || imp.GetStringValue() != csr.URIs[0].String() {
			return nil, status.Error(codes.Unauthenticated, "request impersonation authentication failure")
		}
	}
	leaf, err := f.ca.SignCSR([]byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "sign: %v", err)
	}
	if f.respond != nil {
		return &pb.IstioCertificateResponse{CertChain: f.respond(leaf)}, nil
	}
	chain := []string{string(encodeCerts([]*x509.Certificate{leaf}))}
	for _, c := range f.intermediates {
		chain = append(chain, string(encodeCerts([]*x509.Certificate{c})))
	}
	chain = append(chain, string(encodeCerts(f.roots)))
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

func (f *fakeIstiod) requests() []fakeReq {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeReq(nil), f.reqs...)
}

func parseCSRPEM(s string) (*x509.CertificateRequest, error) {
	b, err := pemBlock([]byte(s), "CERTIFICATE REQUEST")
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificateRequest(b)
}

// istiodEnv is a running fake istiod with the files a client needs.
type istiodEnv struct {
	addr      string
	rootFile  string // trusts the serving certificate
	tokenFile string
	fake      *fakeIstiod
}

// startFakeIstiod serves fake over TLS (a certificate for istiodName) or plaintext on loopback. Its CA is an
// intermediate under a root; the root bundle it returns also holds an unrelated second root.
func startFakeIstiod(t *testing.T, plaintext bool) *istiodEnv {
	t.Helper()
	root, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate()
	if err != nil {
		t.Fatal(err)
	}
	other, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath := writeCA(t, dir, inter.Cert, inter.Key)
	ca, err := NewLocalCA(LocalCAOptions{CertFile: certPath, KeyFile: keyPath, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeIstiod{
		ca:            ca,
		intermediates: []*x509.Certificate{inter.Cert},
		roots:         []*x509.Certificate{other.Cert, root.Cert},
		token:         "token-1",
		clusterID:     "Kubernetes",
	}
	env := &istiodEnv{fake: fake, tokenFile: filepath.Join(dir, "token"), rootFile: filepath.Join(dir, "istiod-root.pem")}
	if err := os.WriteFile(env.tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var opts []grpc.ServerOption
	if !plaintext {
		servingCA, err := testutil.NewCA("istio-system")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(env.rootFile, encodeCerts([]*x509.Certificate{servingCA.Cert}), 0o644); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{servingCert(t, servingCA, istiodName)},
			MinVersion:   tls.VersionTLS12,
		})))
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	pb.RegisterIstioCertificateServiceServer(srv, fake)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	env.addr = lis.Addr().String()
	return env
}

// servingCert issues a DNS-named serving certificate from ca.
func servingCert(t testing.TB, ca *testutil.CA, dns string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dns},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{dns},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newIstiodClient(t *testing.T, opts IstiodCAOptions) *IstiodCA {
	t.Helper()
	c, err := NewIstiodCA(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func TestIstiodCARequestShape(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	env := startFakeIstiod(t, false)
	c := newIstiodClient(t, IstiodCAOptions{
		Address:      env.addr,
		RootCertFile: env.rootFile,
		ServerName:   istiodName,
		TokenFile:    env.tokenFile,
		Impersonate:  true,
		TTL:          20 * time.Minute,
		Headers:      map[string]string{"x-extra": "1"},
	})
	cert, err := c.Issue(context.Background(), testID)
	if err != nil {
		t.Fatal(err)
	}

	// The answer: leaf + intermediate as the chain, both roots as the bundle.
	if cert.ID() != testID || len(cert.Chain()) != 2 || len(cert.Roots()) != 2 {
		t.Fatalf("certificate: id %v, chain %d, roots %d; want %v, 2, 2", cert.ID(), len(cert.Chain()), len(cert.Roots()), testID)
	}
	if got := cert.NotAfter().Sub(cert.NotBefore()); got != 20*time.Minute {
		t.Errorf("lifetime %v, want the requested 20m", got)
	}
	if _, err := VerifyServerChain(cert.Chain(), cert.RootPool(), []spiffeid.ID{testID}); err != nil {
		t.Errorf("issued chain does not verify against its bundle: %v", err)
	}

	// The request.
	reqs := env.fake.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if got := r.md.Get("authorization"); len(got) != 1 || got[0] != "Bearer token-1" {
		t.Errorf("authorization %q", got)
	}
	if got := r.md.Get("clusterid"); len(got) != 1 || got[0] != DefaultClusterID {
		t.Errorf("clusterid %q", got)
	}
	if got := r.md.Get("x-extra"); len(got) != 1 || got[0] != "1" {
		t.Errorf("extra header %q", got)
	}
	if r.req.GetValidityDuration() != 1200 {
		t.Errorf("validity_duration %d, want 1200", r.req.GetValidityDuration())
	}
	fields := r.req.GetMetadata().GetFields()
	if len(fields) != 1 || fields[ImpersonatedIdentityKey].GetStringValue() != testID.String() {
		t.Errorf("metadata %v, want only %s=%s", fields, ImpersonatedIdentityKey, testID)
	}
	csr := r.csr
	if len(csr.Subject.Names) != 0 || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		t.Errorf("CSR subject %v / extra SANs; want empty", csr.Subject)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != testID.String() {
		t.Errorf("CSR URI SANs %v, want [%s]", csr.URIs, testID)
	}
	if csr.SignatureAlgorithm != x509.ECDSAWithSHA256 || csr.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("CSR algorithm %v, want ECDSA P-256 with SHA-256", csr.SignatureAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("CSR signature: %v", err)
	}

	// The token file is read again on every request.
	if err := os.WriteFile(env.tokenFile, []byte("token-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Issue(context.Background(), testID); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("stale token accepted: %v", err)
	}
	env.fake.token = "token-2"
	if _, err := c.Issue(context.Background(), testID); err != nil {
		t.Fatalf("after token rotation: %v", err)
	}
	if got := env.fake.requests()[2].md.Get("authorization"); got[0] != "Bearer token-2" {
		t.Fatalf("rotated token not sent: %q", got)
	}
}

func TestIstiodCAPlaintextWithoutImpersonation(t *testing.T) {
	testutil.CheckGoroutines(t)
	env := startFakeIstiod(t, true)
	env.fake.clusterID = "east"
	c := newIstiodClient(t, IstiodCAOptions{Address: env.addr, Plaintext: true, TokenFile: env.tokenFile, ClusterID: "east"})
	if _, err := c.Issue(context.Background(), testID); err != nil {
		t.Fatal(err)
	}
	r := env.fake.requests()[0]
	if r.req.GetMetadata() != nil {
		t.Errorf("metadata %v sent without Impersonate", r.req.GetMetadata())
	}
	if r.req.GetValidityDuration() != int64(DefaultLeafTTL/time.Second) {
		t.Errorf("validity_duration %d, want default", r.req.GetValidityDuration())
	}
}

func TestIstiodCAResponseErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	env := startFakeIstiod(t, true)
	c := newIstiodClient(t, IstiodCAOptions{Address: env.addr, Plaintext: true, TokenFile: env.tokenFile})
	other := newTestCA(t, time.Hour)
	inter := env.fake.intermediates[0]
	roots := env.fake.roots
	pemOf := func(cs ...*x509.Certificate) string { return string(encodeCerts(cs)) }

	tests := []struct {
		name    string
		respond func(leaf *x509.Certificate) []string
		id      spiffeid.ID
		want    error
		code    codes.Code
	}{
		{name: "leaf only", respond: func(leaf *x509.Certificate) []string { return []string{pemOf(leaf)} }, want: ErrShortChain},
		{name: "empty", respond: func(*x509.Certificate) []string { return nil }, want: ErrShortChain},
		{name: "garbage root", respond: func(leaf *x509.Certificate) []string { return []string{pemOf(leaf), "junk"} }, want: ErrInvalidChain},
		{name: "missing intermediate", respond: func(leaf *x509.Certificate) []string { return []string{pemOf(leaf), pemOf(roots...)} }, want: ErrInvalidChain},
		{name: "foreign roots", respond: func(leaf *x509.Certificate) []string {
			return []string{pemOf(leaf), pemOf(inter), pemOf(other.Root())}
		}, want: ErrInvalidChain},
		{name: "leaf for another identity", respond: func(*x509.Certificate) []string {
			k, _ := newKey()
			csr, _ := NewCSR(testID2, k)
			l, _ := env.fake.ca.SignCSR(csr, 0)
			return []string{pemOf(l), pemOf(inter), pemOf(roots...)}
		}, want: ErrIdentityMismatch},
		{name: "leaf and intermediate in one element", respond: func(leaf *x509.Certificate) []string {
			return []string{pemOf(leaf, inter), pemOf(roots...)}
		}},
		{name: "refused", id: spiffeid.RequireFromString("spiffe://other.td/ns/a/sa/b"), code: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env.fake.respond = tt.respond
			id := tt.id
			if id.IsZero() {
				id = testID
			}
			cert, err := c.Issue(context.Background(), id)
			switch {
			case tt.want != nil:
				if !errors.Is(err, tt.want) {
					t.Fatalf("Issue = %v, %v; want %v", cert, err, tt.want)
				}
			case tt.code != codes.OK:
				if status.Code(err) != tt.code {
					t.Fatalf("Issue error %v, want gRPC code %v", err, tt.code)
				}
			default:
				if err != nil || len(cert.Chain()) != 2 {
					t.Fatalf("Issue = %v, %v; want a two-certificate chain", cert, err)
				}
			}
		})
	}
}

func TestIstiodCATLSChecks(t *testing.T) {
	testutil.CheckGoroutines(t)
	env := startFakeIstiod(t, false)
	t.Run("wrong server name", func(t *testing.T) {
		c := newIstiodClient(t, IstiodCAOptions{Address: env.addr, RootCertFile: env.rootFile, ServerName: "evil.example", TokenFile: env.tokenFile})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Issue(ctx, testID); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("Issue with wrong server name: %v", err)
		}
		if len(env.fake.requests()) != 0 {
			t.Fatal("request reached the server despite a bad server certificate")
		}
	})
	t.Run("untrusted root", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "root.pem")
		if err := os.WriteFile(bad, encodeCerts([]*x509.Certificate{newTestCA(t, time.Hour).Root()}), 0o644); err != nil {
			t.Fatal(err)
		}
		c := newIstiodClient(t, IstiodCAOptions{Address: env.addr, RootCertFile: bad, ServerName: istiodName, TokenFile: env.tokenFile})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Issue(ctx, testID); err == nil {
			t.Fatal("Issue succeeded against an untrusted server")
		}
		if len(env.fake.requests()) != 0 {
			t.Fatal("request reached the server despite a bad server certificate")
		}
	})
	t.Run("options", func(t *testing.T) {
		for name, o := range map[string]IstiodCAOptions{
			"no address":      {RootCertFile: env.rootFile},
			"no root":         {Address: env.addr},
			"missing root":    {Address: env.addr, RootCertFile: filepath.Join(t.TempDir(), "none")},
			"address no port": {Address: "istiod", RootCertFile: env.rootFile},
		} {
			if c, err := NewIstiodCA(o); err == nil {
				_ = c.Close()
				t.Errorf("%s: NewIstiodCA succeeded", name)
			}
		}
	})
}

func TestParseIstioCertChain(t *testing.T) {
	ca := newTestCA(t, time.Hour)
	leafCert, err := ca.Issue(context.Background(), testID)
	if err != nil {
		t.Fatal(err)
	}
	leaf := string(encodeCerts(leafCert.Chain()))
	root := string(encodeCerts([]*x509.Certificate{ca.Root()}))
	root2 := string(encodeCerts([]*x509.Certificate{newTestCA(t, time.Hour).Root()}))
	tests := []struct {
		name              string
		in                []string
		chainLen, rootLen int
		want              error
	}{
		{name: "leaf and root", in: []string{leaf, root}, chainLen: 1, rootLen: 1},
		{name: "several roots", in: []string{leaf, root + root2}, chainLen: 1, rootLen: 2},
		{name: "intermediates", in: []string{leaf, root2, root}, chainLen: 2, rootLen: 1},
		{name: "nil", want: ErrShortChain},
		{name: "one element", in: []string{leaf + root}, want: ErrShortChain},
		{name: "empty leaf", in: []string{"", root}, want: ErrInvalidChain},
		{name: "empty roots", in: []string{leaf, ""}, want: ErrInvalidChain},
		{name: "key block", in: []string{leaf, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, want: ErrInvalidChain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, roots, err := ParseIstioCertChain(tt.in)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				return
			}
			if err != nil || len(chain) != tt.chainLen || len(roots) != tt.rootLen {
				t.Fatalf("got %d chain, %d roots, %v; want %d, %d", len(chain), len(roots), err, tt.chainLen, tt.rootLen)
			}
		})
	}
}

func FuzzParseIstioCertChain(f *testing.F) {
	ca, err := NewLocalCA(LocalCAOptions{})
	if err != nil {
		f.Fatal(err)
	}
	c, err := ca.Issue(context.Background(), testID)
	if err != nil {
		f.Fatal(err)
	}
	leaf, root := string(encodeCerts(c.Chain())), string(encodeCerts(c.Roots()))
	f.Add(leaf, "", root)
	f.Add(leaf, root, root)
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		// gRPC caps a response at 4 MiB by default; past 64 KiB per element inputs only slow the fuzzer.
		if len(a) > 1<<16 || len(b) > 1<<16 || len(c) > 1<<16 {
			return
		}
		in := []string{a, c}
		if b != "" {
			in = []string{a, b, c}
		}
		chain, roots, err := ParseIstioCertChain(in)
		if err != nil {
			return
		}
		if len(chain) == 0 || len(roots) == 0 {
			t.Fatalf("success with %d chain and %d roots", len(chain), len(roots))
		}
	})
}

// TestIstiodCAReal points the client at a real istiod (the one hack/peers/build-istiod.sh builds) when
// AMBIT_ISTIOD_CA_ADDR is set. Other variables: AMBIT_ISTIOD_CA_ROOT (PEM trusting istiod's serving
// certificate; empty means plaintext), AMBIT_ISTIOD_CA_TOKEN (file with the pod-bound node-proxy JWT),
// AMBIT_ISTIOD_CA_SERVER_NAME (default istiod.istio-system.svc), AMBIT_ISTIOD_CLUSTER_ID (default Kubernetes),
// AMBIT_ISTIOD_CA_IDENTITY (identity to impersonate; default spiffe://cluster.local/ns/demo/sa/echo) and
// AMBIT_ISTIOD_CA_DENIED_IDENTITY (optional identity istiod must refuse).
func TestIstiodCAReal(t *testing.T) {
	addr := requirePeerEnv(t, "AMBIT_ISTIOD_CA_ADDR", "a real istiod CA")
	testutil.CheckGoroutines(t)
	opts := IstiodCAOptions{
		Address:      addr,
		RootCertFile: os.Getenv("AMBIT_ISTIOD_CA_ROOT"),
		Plaintext:    os.Getenv("AMBIT_ISTIOD_CA_ROOT") == "",
		ServerName:   envOr("AMBIT_ISTIOD_CA_SERVER_NAME", istiodName),
		TokenFile:    os.Getenv("AMBIT_ISTIOD_CA_TOKEN"),
		ClusterID:    envOr("AMBIT_ISTIOD_CLUSTER_ID", DefaultClusterID),
		Impersonate:  true,
		TTL:          time.Hour,
	}
	c := newIstiodClient(t, opts)
	id := spiffeid.RequireFromString(envOr("AMBIT_ISTIOD_CA_IDENTITY", "spiffe://cluster.local/ns/demo/sa/echo"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	m, err := NewManager(ManagerOptions{Issuer: c})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cert, err := m.Fetch(ctx, id)
	if err != nil {
		t.Fatalf("Fetch %s from istiod at %s: %v", id, addr, err)
	}
	if cert.ID() != id || len(cert.Roots()) == 0 {
		t.Fatalf("istiod certificate: id %v, %d roots", cert.ID(), len(cert.Roots()))
	}
	if _, err := VerifyServerChain(cert.Chain(), cert.RootPool(), []spiffeid.ID{id}); err != nil {
		t.Fatalf("istiod chain does not verify against its own bundle: %v", err)
	}
	t.Logf("istiod issued %s serial %s valid %v..%v, chain %d, roots %d", id, cert.Leaf().SerialNumber,
		cert.NotBefore(), cert.NotAfter(), len(cert.Chain()), len(cert.Roots()))
	if denied := os.Getenv("AMBIT_ISTIOD_CA_DENIED_IDENTITY"); denied != "" {
		_, err := c.Issue(ctx, spiffeid.RequireFromString(denied))
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("impersonating %s: %v, want Unauthenticated", denied, err)
		}
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// requireIstiodEnv is the variable that turns a skipped real-istiod test into a failure. It is separate from
// AMBIT_REQUIRE_PEERS (which the SPIRE tier sets) because the istiod tier is brought up by its own scripts.
const requireIstiodEnv = "AMBIT_REQUIRE_ISTIOD"

// requirePeerEnv returns the value of env, or skips the test naming the missing peer, unless
// AMBIT_REQUIRE_ISTIOD=1, in which case the test fails.
func requirePeerEnv(t *testing.T, env, what string) string {
	t.Helper()
	if v := os.Getenv(env); v != "" {
		return v
	}
	if os.Getenv(requireIstiodEnv) == "1" {
		t.Fatalf("test needs %s (%s unset) and %s=1 forbids skipping", what, env, requireIstiodEnv)
	}
	t.Skipf("test needs %s: set %s (peer tier; %s=1 makes this a failure)", what, env, requireIstiodEnv)
	return ""
}

// pemBlock returns the bytes of the first PEM block of type typ in data.
func pemBlock(data []byte, typ string) ([]byte, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("no %s PEM block: %w", typ, ErrInvalidChain)
		}
		if b.Type == typ {
			return b.Bytes, nil
		}
	}
}
