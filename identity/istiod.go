package identity

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// Defaults of IstiodCAOptions.
const (
	DefaultClusterID = "Kubernetes"
	// ImpersonatedIdentityKey is the request metadata key with which a node proxy asks istiod for another
	// workload's certificate.
	ImpersonatedIdentityKey = "ImpersonatedIdentity"
)

// IstiodCAOptions configures NewIstiodCA.
type IstiodCAOptions struct {
	// Address is istiod's CA endpoint, host:port (for example istiod.istio-system.svc:15012).
	Address string
	// RootCertFile holds the PEM roots that istiod's serving certificate must chain to. It is read again
	// whenever it changes on disk, so a rotated root takes effect on the next connection. Required unless
	// Plaintext is set.
	RootCertFile string
	// ServerName is the DNS name istiod's certificate must carry (default: the host part of Address).
	ServerName string
	// Plaintext disables TLS. For tests only.
	Plaintext bool
	// TokenFile holds the bearer token (a pod-bound service-account JWT); it is read on every request.
	// Empty means no authorization header.
	TokenFile string
	// ClusterID is sent as the clusterid header (default DefaultClusterID).
	ClusterID string
	// Impersonate adds metadata {"ImpersonatedIdentity": <requested id>} to every request, as a node proxy
	// does when it requests certificates for the workloads on its node.
	Impersonate bool
	// TTL is the requested validity (validity_duration; default DefaultLeafTTL). istiod may shorten it.
	TTL time.Duration
	// Headers are extra request headers (ztunnel's CA_HEADER_* settings).
	Headers map[string]string
	// Logger; nil discards.
	Logger *slog.Logger
	// DialOptions are appended to the gRPC dial options.
	DialOptions []grpc.DialOption
}

// IstiodCA issues certificates through istiod's IstioCertificateService. It is safe for concurrent use.
type IstiodCA struct {
	opts   IstiodCAOptions
	conn   *grpc.ClientConn
	client pb.IstioCertificateServiceClient
	roots  *rootFile
	log    *slog.Logger
}

// NewIstiodCA prepares a client; the connection is made lazily on the first request.
func NewIstiodCA(opts IstiodCAOptions) (*IstiodCA, error) {
	if opts.Address == "" {
		return nil, errors.New("create istiod ca client: empty address")
	}
	if opts.ClusterID == "" {
		opts.ClusterID = DefaultClusterID
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultLeafTTL
	}
	c := &IstiodCA{opts: opts, log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	var creds credentials.TransportCredentials
	if opts.Plaintext {
		creds = insecure.NewCredentials()
	} else {
		if opts.RootCertFile == "" {
			return nil, errors.New("create istiod ca client: RootCertFile is required without Plaintext")
		}
		name := opts.ServerName
		if name == "" {
			host, _, err := net.SplitHostPort(opts.Address)
			if err != nil {
				return nil, fmt.Errorf("create istiod ca client: %w", err)
			}
			name = host
		}
		c.roots = &rootFile{path: opts.RootCertFile}
		if _, err := c.roots.pool(); err != nil {
			return nil, fmt.Errorf("create istiod ca client: %w", err)
		}
		creds = credentials.NewTLS(&tls.Config{
			MinVersion: tls.VersionTLS12,
			ServerName: name,
			// Verification happens in VerifyConnection against the current contents of RootCertFile, so that a
			// rotated root is picked up without rebuilding the channel; Go's built-in check would pin the pool.
			InsecureSkipVerify: true, //nolint:gosec // verified below
			VerifyConnection: func(cs tls.ConnectionState) error {
				return c.verifyIstiod(cs, name)
			},
		})
	}
	dial := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts.DialOptions...)
	conn, err := grpc.NewClient(opts.Address, dial...)
	if err != nil {
		return nil, fmt.Errorf("create istiod ca client: %w", err)
	}
	c.conn = conn
	c.client = pb.NewIstioCertificateServiceClient(conn)
	return c, nil
}

// Close closes the gRPC connection.
func (c *IstiodCA) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("close istiod ca client: %w", err)
	}
	return nil
}

// Issue generates a P-256 key and CSR for id, asks istiod to sign it, and checks the answer: at least a leaf
// and a root element, the leaf's first URI SAN equal to id, the key matching and the chain leading to a root.
func (c *IstiodCA) Issue(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("issue %s from istiod: %w", id, err)
	}
	csr, err := NewCSR(id, key)
	if err != nil {
		return nil, fmt.Errorf("issue %s from istiod: %w", id, err)
	}
	req := &pb.IstioCertificateRequest{Csr: string(csr), ValidityDuration: int64(c.opts.TTL / time.Second)}
	if c.opts.Impersonate {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			ImpersonatedIdentityKey: structpb.NewStringValue(id.String()),
		}}
	}
	md, err := c.requestMetadata()
	if err != nil {
		return nil, fmt.Errorf("issue %s from istiod: %w", id, err)
	}
	resp, err := c.client.CreateCertificate(metadata.NewOutgoingContext(ctx, md), req)
	if err != nil {
		return nil, fmt.Errorf("issue %s from istiod: %w", id, err)
	}
	chain, roots, err := ParseIstioCertChain(resp.GetCertChain())
	if err != nil {
		return nil, fmt.Errorf("issue %s from istiod: %w", id, err)
	}
	cert, err := NewCertificate(id, chain, key, roots)
	if err != nil {
		return nil, fmt.Errorf("issue %s from istiod: %w", id, err)
	}
	c.log.Debug("istiod issued certificate", "identity", id.String(), "serial", cert.Leaf().SerialNumber.String(),
		"not_after", cert.NotAfter())
	return cert, nil
}

func (c *IstiodCA) requestMetadata() (metadata.MD, error) {
	md := metadata.MD{}
	for k, v := range c.opts.Headers {
		md.Set(k, v)
	}
	md.Set("clusterid", c.opts.ClusterID)
	if c.opts.TokenFile != "" {
		// As ztunnel: a token file that does not exist means no token.
		tok, err := os.ReadFile(c.opts.TokenFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("read token: %w", err)
		case strings.TrimSpace(string(tok)) == "":
			return nil, fmt.Errorf("read token %s: empty", c.opts.TokenFile)
		default:
			md.Set("authorization", "Bearer "+strings.TrimSpace(string(tok)))
		}
	}
	return md, nil
}

func (c *IstiodCA) verifyIstiod(cs tls.ConnectionState, name string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("verify istiod: no certificate")
	}
	pool, err := c.roots.pool()
	if err != nil {
		return fmt.Errorf("verify istiod: %w", err)
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		DNSName:       name,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("verify istiod: %w", err)
	}
	return nil
}

// ParseIstioCertChain splits IstioCertificateResponse.cert_chain: element 0 is the leaf, the middle elements
// are intermediates, and the last element is the root bundle, which may hold several PEM roots. Any element
// but the last may itself hold several PEM certificates; they are kept in order. Fewer than two elements is
// ErrShortChain.
func ParseIstioCertChain(elems []string) (chain, roots []*x509.Certificate, err error) {
	if len(elems) < 2 {
		return nil, nil, fmt.Errorf("parse istio cert chain: %d elements: %w", len(elems), ErrShortChain)
	}
	for i, e := range elems[:len(elems)-1] {
		certs, err := ParseCertificatesPEM([]byte(e))
		if err != nil {
			return nil, nil, fmt.Errorf("parse istio cert chain element %d: %w", i, err)
		}
		chain = append(chain, certs...)
	}
	roots, err = ParseCertificatesPEM([]byte(elems[len(elems)-1]))
	if err != nil {
		return nil, nil, fmt.Errorf("parse istio cert chain roots: %w", err)
	}
	return chain, roots, nil
}

// rootFile caches a PEM root file, re-reading it when its contents change.
type rootFile struct {
	path string

	mu   sync.Mutex
	raw  []byte
	last *x509.CertPool
}

func (r *rootFile) pool() (*x509.CertPool, error) {
	raw, err := os.ReadFile(r.path)
	if err != nil {
		return nil, fmt.Errorf("read roots: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last != nil && bytes.Equal(raw, r.raw) {
		return r.last, nil
	}
	certs, err := ParseCertificatesPEM(raw)
	if err != nil {
		return nil, fmt.Errorf("read roots %s: %w", r.path, err)
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	r.raw, r.last = raw, p
	return p, nil
}
