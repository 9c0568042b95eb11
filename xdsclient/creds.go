package xdsclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"

	"google.golang.org/grpc/credentials"
)

// tokenCreds adds ztunnel's per-request headers: authorization (the token file, read on every stream so a
// rotated projected token is used at once), clusterid, and any extra headers.
type tokenCreds struct {
	tokenFile string
	clusterID string
	headers   map[string]string
	secure    bool
}

var _ credentials.PerRPCCredentials = (*tokenCreds)(nil)

func (c *tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	md := make(map[string]string, len(c.headers)+2)
	for k, v := range c.headers {
		md[strings.ToLower(k)] = v
	}
	md["clusterid"] = c.clusterID
	if c.tokenFile != "" {
		// As ztunnel: a token file that does not exist means no token (plaintext development set-ups).
		raw, err := os.ReadFile(c.tokenFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("read token: %w", err)
		case strings.TrimSpace(string(raw)) == "":
			return nil, fmt.Errorf("read token %s: empty", c.tokenFile)
		default:
			md["authorization"] = "Bearer " + strings.TrimSpace(string(raw))
		}
	}
	return md, nil
}

func (c *tokenCreds) RequireTransportSecurity() bool { return c.secure }

// SystemRoots as Options.RootCertFile trusts the operating system's roots (ztunnel's XDS_ROOT_CA=SYSTEM).
const SystemRoots = "SYSTEM"

// rootFile holds a PEM root file, parsed again whenever its contents change, so that a rotated root
// (istio-ca-root-cert) takes effect on the next connection without a restart.
type rootFile struct {
	path string

	mu   sync.Mutex
	raw  []byte         // guarded by mu
	pool *x509.CertPool // guarded by mu
}

func (r *rootFile) load() (*x509.CertPool, error) {
	if r.path == SystemRoots {
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("read system roots: %w", err)
		}
		return pool, nil
	}
	raw, err := os.ReadFile(r.path)
	if err != nil {
		return nil, fmt.Errorf("read roots: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pool != nil && bytes.Equal(raw, r.raw) {
		return r.pool, nil
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := raw; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("read roots %s: %w", r.path, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("read roots %s: no certificate", r.path)
	}
	r.raw, r.pool = raw, pool
	return pool, nil
}

// tlsConfig returns a client TLS config that verifies the server against the current roots of rf and
// accepts serverName or, failing that, altName (ztunnel's ALT_XDS_HOSTNAME).
func tlsConfig(rf *rootFile, serverName, altName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		NextProtos: []string{"h2"},
		// Verification happens in VerifyConnection against the roots read at handshake time; Go's built-in
		// check would pin the pool for the life of the channel.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("verify xds server: no certificate")
			}
			pool, err := rf.load()
			if err != nil {
				return fmt.Errorf("verify xds server: %w", err)
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			opts := x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: serverName,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			_, err = cs.PeerCertificates[0].Verify(opts)
			if err != nil && altName != "" {
				opts.DNSName = altName
				_, err = cs.PeerCertificates[0].Verify(opts)
			}
			if err != nil {
				return fmt.Errorf("verify xds server: %w", err)
			}
			return nil
		},
	}
}
