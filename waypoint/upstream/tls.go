package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

// TLSConfig returns the client TLS configuration of t (DestinationRule tls SIMPLE or MUTUAL) for a
// destination named host: the server name sent is t.SNI, else host; the server certificate must chain
// to t.CACertificates (else the system roots) and name t.SubjectAltNames when set, else the server
// name, unless t.InsecureSkipVerify; MUTUAL presents t.ClientCertificate. It reads the files now.
// nextProtos is the ALPN offer.
func TLSConfig(t *model.TLS, host string, nextProtos []string) (*tls.Config, error) {
	if t == nil {
		return nil, errors.New("tls config: no settings")
	}
	sni := t.SNI
	if sni == "" {
		sni = host
	}
	cfg := &tls.Config{ServerName: sni, NextProtos: nextProtos, MinVersion: tls.VersionTLS12}
	if t.CACertificates != "" {
		pem, err := os.ReadFile(t.CACertificates)
		if err != nil {
			return nil, fmt.Errorf("read caCertificates: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read caCertificates %s: no PEM certificate", t.CACertificates)
		}
		cfg.RootCAs = pool
	}
	if t.Mode == model.TLSMutual && t.ClientCertificate != "" {
		cert, err := tls.LoadX509KeyPair(t.ClientCertificate, t.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("read client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	switch {
	case t.InsecureSkipVerify:
		cfg.InsecureSkipVerify = true
	case len(t.SubjectAltNames) > 0:
		// Verify the chain as usual, then the names against subjectAltNames instead of the SNI.
		roots := cfg.RootCAs
		sans := slices.Clone(t.SubjectAltNames)
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return verifySANs(cs, roots, sans)
		}
	}
	return cfg, nil
}

func verifySANs(cs tls.ConnectionState, roots *x509.CertPool, sans []string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: no server certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
		return err
	}
	for _, want := range sans {
		if leaf.VerifyHostname(want) == nil {
			return nil
		}
		for _, u := range leaf.URIs {
			if u.String() == want {
				return nil
			}
		}
	}
	return fmt.Errorf("tls: server certificate names none of %q", sans)
}
