package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// clusterFlags are istioctl's root flags for reaching a cluster: the kubeconfig file and its context.
type clusterFlags struct {
	kubeconfig string
	context    string
}

func (cf *clusterFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVarP(&cf.kubeconfig, "kubeconfig", "c", "", "Kubernetes configuration file")
	cmd.PersistentFlags().StringVar(&cf.context, "context", "", "Kubernetes configuration context")
}

// clusterClients are the API clients of the cluster commands.
type clusterClients struct {
	kube    kubernetes.Interface
	gateway gwclient.Interface
}

// newClusterClients builds the clients; tests replace it.
var newClusterClients = func(cf *clusterFlags) (*clusterClients, error) {
	// istioctl's loading rules: the --kubeconfig file if given, else $KUBECONFIG, in-cluster credentials or
	// ~/.kube/config, with client-go's defaults for what none of them sets.
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.DefaultClientConfig = &clientcmd.DefaultClientConfig
	rules.ExplicitPath = cf.kubeconfig
	overrides := &clientcmd.ConfigOverrides{ClusterDefaults: clientcmd.ClusterDefaults, CurrentContext: cf.context}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("failed to setup client: %v", err)
	}
	rc.QPS, rc.Burst = 50, 100
	rc.Timeout = 15 * time.Second
	rc.UserAgent = "ambitctl"
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	gc, err := gwclient.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &clusterClients{kube: kc, gateway: gc}, nil
}

// clients returns the cluster clients, with istioctl's error wording.
func (cf *clusterFlags) clients() (*clusterClients, error) {
	c, err := newClusterClients(cf)
	if err != nil {
		return nil, fmt.Errorf("failed to create Kubernetes client: %v", err)
	}
	return c, nil
}

// namespaceOrDefault returns ns, or else the namespace of the kubeconfig's selected context, or else
// "default", as istioctl does (it reads the same files with the same precedence).
func (cf *clusterFlags) namespaceOrDefault(ns string) string {
	if ns != "" {
		return ns
	}
	access := clientcmd.NewDefaultPathOptions()
	if cf.kubeconfig != "" {
		access.GlobalFile = cf.kubeconfig
	}
	config, err := access.GetStartingConfig()
	if err != nil {
		return corev1.NamespaceDefault
	}
	name := config.CurrentContext
	if cf.context != "" {
		name = cf.context
	}
	if c, ok := config.Contexts[name]; ok && c.Namespace != "" {
		return c.Namespace
	}
	return corev1.NamespaceDefault
}
