//go:build e2e

package e2e

import (
	"crypto/x509"

	"github.com/ambit-mesh/ambit/identity"
)

// x509Opts verifies a leaf against its certificate's trust bundle and intermediates.
func x509Opts(c *identity.Certificate) x509.VerifyOptions {
	inter := x509.NewCertPool()
	for _, ic := range c.Chain()[1:] {
		inter.AddCert(ic)
	}
	return x509.VerifyOptions{Roots: c.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}
