package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/config/local"
)

// configFlags select local configuration files and the mesh settings used to compile them.
type configFlags struct {
	files        []string
	trustDomain  string
	domainSuffix string
}

func (cf *configFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringSliceVarP(&cf.files, "file", "f", nil, "Kubernetes YAML or JSON file or directory (repeatable)")
	cmd.Flags().StringVar(&cf.trustDomain, "trust-domain", "cluster.local", "trust domain of workload identities")
	cmd.Flags().StringVar(&cf.domainSuffix, "domain-suffix", "cluster.local", "DNS suffix of service hostnames")
}

// compile loads and compiles the files; every problem with them is bad input.
func (cf *configFlags) compile() (*local.Result, error) {
	if len(cf.files) == 0 {
		return nil, badInput("at least one -f FILE is required")
	}
	objs, err := local.LoadFiles(cf.files...)
	if err != nil {
		return nil, inputError{err}
	}
	res, err := local.Compile(objs, local.Options{TrustDomain: cf.trustDomain, DomainSuffix: cf.domainSuffix})
	if err != nil {
		var ie *local.InputError
		if errors.As(err, &ie) {
			return nil, inputError{err}
		}
		return nil, err
	}
	return res, nil
}
