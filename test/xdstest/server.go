package xdstest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	server "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Options configures Start.
type Options struct {
	// TypeURLs served; each gets its own LinearCache. Required.
	TypeURLs []string
	// TLS serves with a fresh CA-signed certificate for ServerName; the CA is written to Server.RootFile.
	TLS bool
	// ServerName of the TLS certificate (default "istiod.istio-system.svc").
	ServerName string
	// Token, when set, is required as "authorization: Bearer <Token>" on every stream.
	Token string
	// Hold lists type URLs whose watches get no response until Release is called (to test readiness).
	Hold []string
}

// Server is a running test server.
type Server struct {
	tb   testing.TB
	opts Options
	// Addr is the loopback host:port.
	Addr string
	// RootFile is the PEM CA file to trust (TLS only).
	RootFile string
	caches   map[string]*cache.LinearCache
	gates    map[string]*gate
	mux      *cache.MuxCache
	creds    credentials.TransportCredentials

	mu       sync.Mutex
	grpc     *grpc.Server                       // guarded by mu
	requests []*discovery.DeltaDiscoveryRequest // guarded by mu
	headers  []metadata.MD                      // guarded by mu; one per stream
	changed  chan struct{}                      // guarded by mu; closed on every request
}

// Start starts a server; it stops at test cleanup.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s := &Server{tb: tb, opts: opts, caches: map[string]*cache.LinearCache{}, changed: make(chan struct{})}
	for _, t := range opts.TypeURLs {
		s.caches[t] = cache.NewLinearCache(t)
	}
	s.mux = &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{},
	}
	for t, c := range s.caches {
		s.mux.Caches[t] = c
	}
	s.gates = map[string]*gate{}
	for _, t := range opts.Hold {
		g := &gate{inner: s.caches[t]}
		s.gates[t] = g
		s.mux.Caches[t] = g
	}
	if opts.TLS {
		name := opts.ServerName
		if name == "" {
			name = "istiod.istio-system.svc"
		}
		cert, rootPEM := serverCert(tb, name)
		s.RootFile = filepath.Join(tb.TempDir(), "root-cert.pem")
		if err := os.WriteFile(s.RootFile, rootPEM, 0o600); err != nil {
			tb.Fatal(err)
		}
		s.creds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s.Addr = lis.Addr().String()
	s.serve(lis)
	tb.Cleanup(s.Stop)
	return s
}

func (s *Server) serve(lis net.Listener) {
	var opts []grpc.ServerOption
	if s.creds != nil {
		opts = append(opts, grpc.Creds(s.creds))
	}
	opts = append(opts, grpc.StreamInterceptor(s.intercept))
	g := grpc.NewServer(opts...)
	xds := server.NewServer(context.Background(), s.mux, server.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			s.mu.Lock()
			s.requests = append(s.requests, proto.Clone(r).(*discovery.DeltaDiscoveryRequest))
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
			return nil
		},
	})
	discovery.RegisterAggregatedDiscoveryServiceServer(g, xds)
	s.mu.Lock()
	s.grpc = g
	s.mu.Unlock()
	go func() { _ = g.Serve(lis) }()
}

func (s *Server) intercept(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	s.mu.Lock()
	s.headers = append(s.headers, md.Copy())
	s.mu.Unlock()
	if s.opts.Token != "" {
		if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+s.opts.Token {
			return status.Error(codes.Unauthenticated, "bad token")
		}
	}
	return h(srv, ss)
}

// Stop stops the server and closes every stream.
func (s *Server) Stop() {
	s.mu.Lock()
	g := s.grpc
	s.grpc = nil
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// Restart stops the server and serves again on the same address with the same resources.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	var lis net.Listener
	var err error
	for range 100 { // the old listener's port may take a moment to free
		if lis, err = net.Listen("tcp", s.Addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		s.tb.Fatal(err)
	}
	s.serve(lis)
}

// Set creates or replaces resources of typeURL by name.
func (s *Server) Set(typeURL string, resources map[string]proto.Message) {
	s.tb.Helper()
	up := make(map[string]types.Resource, len(resources))
	for n, m := range resources {
		up[n] = m
	}
	if err := s.caches[typeURL].UpdateResources(up, nil); err != nil {
		s.tb.Fatal(err)
	}
}

// Delete removes resources of typeURL by name.
func (s *Server) Delete(typeURL string, names ...string) {
	s.tb.Helper()
	if err := s.caches[typeURL].UpdateResources(nil, names); err != nil {
		s.tb.Fatal(err)
	}
}

// Requests returns a copy of every request received so far, in order.
func (s *Server) Requests() []*discovery.DeltaDiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Headers returns the request headers of every stream opened so far.
func (s *Server) Headers() []metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.headers)
}

// WaitRequest waits up to 10 s for a request, received at index from or later, that satisfies match, and
// returns it with its index.
func (s *Server) WaitRequest(from int, match func(*discovery.DeltaDiscoveryRequest) bool) (*discovery.DeltaDiscoveryRequest, int) {
	s.tb.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		for i := from; i < len(s.requests); i++ {
			if match(s.requests[i]) {
				r := s.requests[i]
				s.mu.Unlock()
				return r, i
			}
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			s.tb.Fatalf("no matching xDS request within 10 s (have %d)", len(s.Requests()))
			return nil, -1
		}
	}
}

// serverCert makes a CA and a serving certificate for name (and 127.0.0.1).
func serverCert(tb testing.TB, name string) (tls.Certificate, []byte) {
	tb.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "xdstest ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), DNSNames: []string{name},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// String describes the server for logs.
func (s *Server) String() string { return fmt.Sprintf("xdstest server %s", s.Addr) }

// Release lets the watches of a held type URL (Options.Hold) through.
func (s *Server) Release(typeURL string) {
	s.tb.Helper()
	if err := s.gates[typeURL].release(); err != nil {
		s.tb.Fatal(err)
	}
}

// gate is a cache that parks delta watches until released.
type gate struct {
	inner cache.Cache

	mu     sync.Mutex
	open   bool          // guarded by mu
	parked []parkedWatch // guarded by mu
}

type parkedWatch struct {
	req    *cache.DeltaRequest
	sub    cache.Subscription
	out    chan cache.DeltaResponse
	cancel *func()
}

var _ cache.Cache = (*gate)(nil)

func (g *gate) CreateWatch(r *cache.Request, sub cache.Subscription, out chan cache.Response) (func(), error) {
	return g.inner.CreateWatch(r, sub, out)
}

func (g *gate) CreateDeltaWatch(r *cache.DeltaRequest, sub cache.Subscription, out chan cache.DeltaResponse) (func(), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open {
		return g.inner.CreateDeltaWatch(r, sub, out)
	}
	cancel := new(func())
	*cancel = func() {}
	g.parked = append(g.parked, parkedWatch{req: r, sub: sub, out: out, cancel: cancel})
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		(*cancel)()
	}, nil
}

func (g *gate) Fetch(ctx context.Context, r *cache.Request) (cache.Response, error) {
	return g.inner.Fetch(ctx, r)
}

func (g *gate) release() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = true
	for _, p := range g.parked {
		c, err := g.inner.CreateDeltaWatch(p.req, p.sub, p.out)
		if err != nil {
			return err
		}
		if c != nil {
			*p.cancel = c
		}
	}
	g.parked = nil
	return nil
}
