package identity

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// File names of a LocalCA root kept in LocalCAOptions.Dir.
const (
	RootCertFileName = "root-cert.pem"
	RootKeyFileName  = "root-key.pem"
)

// Defaults of LocalCAOptions.
const (
	DefaultLeafTTL = 24 * time.Hour
	DefaultRootTTL = 10 * 365 * 24 * time.Hour
)

// LocalCAOptions configures NewLocalCA. With Dir set, the root is loaded from Dir or, when Dir holds none,
// created there; with CertFile and KeyFile set, the root is loaded from them; with neither, the root lives in
// memory only.
type LocalCAOptions struct {
	// Dir keeps the root as RootCertFileName (mode 0644) and RootKeyFileName (mode 0600). The directory is
	// created with mode 0700 if missing. A key file readable by group or others is refused (ErrKeyPermissions).
	Dir string
	// CertFile and KeyFile name an existing root certificate and key (PEM; PKCS#8, SEC 1 or PKCS#1 key).
	CertFile, KeyFile string
	// TrustDomain is the trust domain the CA signs for (default DefaultTrustDomain). It names a new root.
	TrustDomain string
	// TTL is the lifetime of issued leaves (default DefaultLeafTTL).
	TTL time.Duration
	// RootTTL is the lifetime of a newly created root (default DefaultRootTTL).
	RootTTL time.Duration
	// Logger receives creation and load events; nil discards.
	Logger *slog.Logger
}

// LocalCA is a single-machine certificate authority: an ECDSA P-256 (or loaded) root that signs SPIFFE
// leaf certificates for one trust domain. It is safe for concurrent use.
type LocalCA struct {
	td   spiffeid.TrustDomain
	ttl  time.Duration
	root *x509.Certificate
	key  crypto.Signer
	log  *slog.Logger
}

// NewLocalCA loads or creates the root described by opts.
func NewLocalCA(opts LocalCAOptions) (*LocalCA, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tdName := opts.TrustDomain
	if tdName == "" {
		tdName = DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return nil, fmt.Errorf("create local ca: %w", err)
	}
	ca := &LocalCA{td: td, ttl: opts.TTL, log: log}
	if ca.ttl <= 0 {
		ca.ttl = DefaultLeafTTL
	}
	rootTTL := opts.RootTTL
	if rootTTL <= 0 {
		rootTTL = DefaultRootTTL
	}

	switch {
	case opts.Dir != "" && (opts.CertFile != "" || opts.KeyFile != ""):
		return nil, errors.New("create local ca: Dir and CertFile/KeyFile are exclusive")
	case (opts.CertFile == "") != (opts.KeyFile == ""):
		return nil, errors.New("create local ca: CertFile and KeyFile go together")
	case opts.CertFile != "":
		ca.root, ca.key, err = loadRoot(opts.CertFile, opts.KeyFile, false)
		if err != nil {
			return nil, fmt.Errorf("create local ca: %w", err)
		}
		log.Info("loaded local CA root", "cert", opts.CertFile, "serial", ca.root.SerialNumber.String())
	case opts.Dir != "":
		ca.root, ca.key, err = loadOrCreateRoot(opts.Dir, td, rootTTL, log)
		if err != nil {
			return nil, fmt.Errorf("create local ca: %w", err)
		}
	default:
		ca.root, ca.key, err = newRoot(td, rootTTL)
		if err != nil {
			return nil, fmt.Errorf("create local ca: %w", err)
		}
	}
	return ca, nil
}

// Root returns the CA's root certificate.
func (ca *LocalCA) Root() *x509.Certificate { return ca.root }

// TrustDomain returns the trust domain the CA signs for.
func (ca *LocalCA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Issue generates an ECDSA P-256 key and signs a leaf for id with the configured TTL.
func (ca *LocalCA) Issue(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("issue %s: %w", id, err)
	}
	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", id, err)
	}
	leaf, err := ca.sign(id, key.Public(), ca.ttl)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", id, err)
	}
	return NewCertificate(id, []*x509.Certificate{leaf}, key, []*x509.Certificate{ca.root})
}

// SignCSR signs a PEM or DER certificate request the way istiod does for a workload: the request's
// signature must verify and it must carry exactly one URI SAN, a SPIFFE ID in the CA's trust domain.
// ttl <= 0 means the configured TTL. It returns the leaf.
func (ca *LocalCA) SignCSR(csr []byte, ttl time.Duration) (*x509.Certificate, error) {
	if b, _ := pem.Decode(csr); b != nil {
		csr = b.Bytes
	}
	req, err := x509.ParseCertificateRequest(csr)
	if err != nil {
		return nil, fmt.Errorf("sign csr: %w", err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign csr: %w", err)
	}
	if len(req.URIs) != 1 {
		return nil, fmt.Errorf("sign csr: %d URI SANs, want 1: %w", len(req.URIs), ErrIdentityMismatch)
	}
	id, err := spiffeid.FromURI(req.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("sign csr: %w: %w", ErrIdentityMismatch, err)
	}
	if ttl <= 0 {
		ttl = ca.ttl
	}
	leaf, err := ca.sign(id, req.PublicKey, ttl)
	if err != nil {
		return nil, fmt.Errorf("sign csr: %w", err)
	}
	return leaf, nil
}

func (ca *LocalCA) sign(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, error) {
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("sign %s: ca serves %s: %w", id, ca.td, ErrTrustDomainMismatch)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	// X.509 times have one-second resolution; truncate so that NotBefore and NotAfter read back unchanged.
	notBefore := time.Now().Truncate(time.Second)
	notAfter := notBefore.Add(ttl)
	if notAfter.After(ca.root.NotAfter) {
		notAfter = ca.root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	return leaf, nil
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func newRoot(td spiffeid.TrustDomain, ttl time.Duration) (*x509.Certificate, crypto.Signer, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	notBefore := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{td.Name()}, CommonName: "Ambit local CA"},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create root: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("create root: %w", err)
	}
	return root, key, nil
}

func loadOrCreateRoot(dir string, td spiffeid.TrustDomain, ttl time.Duration, log *slog.Logger) (*x509.Certificate, crypto.Signer, error) {
	// Several processes may start on one directory at once (agents and waypoints on one machine): an
	// exclusive lock makes exactly one of them create the root and the others load it.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create root dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("lock root dir: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, nil, fmt.Errorf("lock root dir: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	certPath, keyPath := filepath.Join(dir, RootCertFileName), filepath.Join(dir, RootKeyFileName)
	certExists, err := exists(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyExists, err := exists(keyPath)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case certExists && keyExists:
		root, key, err := loadRoot(certPath, keyPath, true)
		if err != nil {
			return nil, nil, err
		}
		log.Info("loaded local CA root", "dir", dir, "serial", root.SerialNumber.String())
		return root, key, nil
	case certExists || keyExists:
		return nil, nil, fmt.Errorf("load root from %s: only one of %s and %s exists; refusing to overwrite",
			dir, RootCertFileName, RootKeyFileName)
	}

	root, key, err := newRoot(td, ttl)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal root key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create root dir: %w", err)
	}
	// Key first: a crash in between leaves a lone key, which the next start reports instead of silently
	// replacing a root that certificates may already chain to.
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(certPath, encodeCerts([]*x509.Certificate{root}), 0o644); err != nil {
		return nil, nil, err
	}
	log.Info("created local CA root", "dir", dir, "trust_domain", td.Name(), "serial", root.SerialNumber.String(),
		"not_after", root.NotAfter)
	return root, key, nil
}

func loadRoot(certPath, keyPath string, checkMode bool) (*x509.Certificate, crypto.Signer, error) {
	if checkMode {
		st, err := os.Stat(keyPath)
		if err != nil {
			return nil, nil, fmt.Errorf("load root key: %w", err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			return nil, nil, fmt.Errorf("load root key %s: mode %v: %w", keyPath, st.Mode().Perm(), ErrKeyPermissions)
		}
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("load root cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("load root key: %w", err)
	}
	certs, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("load root cert %s: %w", certPath, err)
	}
	root := certs[0]
	if !root.BasicConstraintsValid || !root.IsCA {
		return nil, nil, fmt.Errorf("load root cert %s: not a CA certificate: %w", certPath, ErrInvalidChain)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("load root key %s: %w", keyPath, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(root.PublicKey) {
		return nil, nil, fmt.Errorf("load root: key does not match certificate: %w", ErrInvalidChain)
	}
	return root, key, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
}

// writeFileAtomic writes data to a temporary file with mode perm in path's directory and renames it to path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		_ = f.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
