package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// defaultKubeTimeout is istioctl's --kubeclient-timeout default.
const defaultKubeTimeout = "15s"

// clusterFlags are istioctl's root flags for reaching a cluster (istioctl/pkg/cli/option.go): the kubeconfig
// file and its context, impersonation, the client timeout, client-go's log verbosity, and the Istio system
// namespace (accepted as istioctl does; the waypoint commands do not use it).
type clusterFlags struct {
	kubeconfig        string
	context           string
	impersonate       string
	impersonateUID    string
	impersonateGroups []string
	istioNamespace    string
	kubeTimeout       string
	vklog             klogLevel
}

func (cf *clusterFlags) register(cmd *cobra.Command) {
	fs := cmd.PersistentFlags()
	fs.StringVarP(&cf.kubeconfig, "kubeconfig", "c", "", "Kubernetes configuration file")
	fs.StringVar(&cf.context, "context", "", "Kubernetes configuration context")
	fs.StringVar(&cf.impersonate, "as", "",
		"Username to impersonate for the operation. User could be a regular user or a service account in a namespace")
	fs.StringVar(&cf.impersonateUID, "as-uid", "", "UID to impersonate for the operation.")
	fs.StringArrayVar(&cf.impersonateGroups, "as-group", nil,
		"Group to impersonate for the operation, this flag can be repeated to specify multiple groups.")
	fs.StringVarP(&cf.istioNamespace, "istioNamespace", "i", "istio-system", "Istio system namespace")
	fs.StringVar(&cf.kubeTimeout, "kubeclient-timeout", defaultKubeTimeout,
		"Kubernetes client timeout as a time.Duration string, defaults to 15 seconds.")
	fs.Var(&cf.vklog, "vklog", "number for the log level verbosity. Like -v flag. ex: --vklog=9")
}

// klogLevel is the value of --vklog: setting it sets client-go's (klog's) verbosity, as istioctl's does.
type klogLevel struct{ klog.Level }

func (l *klogLevel) Type() string { return "Level" }

func (l *klogLevel) Set(s string) error {
	if err := l.Level.Set(s); err != nil {
		return err
	}
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	return fs.Set("v", s)
}

// clusterClients are the API clients of the cluster commands.
type clusterClients struct {
	kube    kubernetes.Interface
	gateway gwclient.Interface
}

// newClusterClients builds the clients; tests replace it.
var newClusterClients = func(cf *clusterFlags) (*clusterClients, error) {
	timeout := 15 * time.Second
	if cf.kubeTimeout != "" {
		d, err := time.ParseDuration(cf.kubeTimeout)
		if err != nil {
			return nil, fmt.Errorf("error parsing kubeclient-timeout: %v", err)
		}
		timeout = d
	}
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
	rc.Timeout = timeout
	if cf.impersonate != "" {
		// As istioctl: the UID and groups only count together with a user name.
		rc.Impersonate = rest.ImpersonationConfig{UserName: cf.impersonate, UID: cf.impersonateUID, Groups: cf.impersonateGroups}
	}
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
