package agent

import (
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/ambit-mesh/ambit/identity"
)

func TestKubeEnrollment(t *testing.T) {
	base := Config{NodeName: "n", XDSAddress: "istiod:15012", XDSPlaintext: true, PodName: "p", PodNamespace: "ns",
		Identity: identity.SourceIstiod, CAAddress: "istiod:15012"}
	cases := []struct {
		name      string
		mode      string
		xds       string
		config    string
		client    bool
		inCluster bool
		want      bool
		err       string
	}{
		{name: "auto in cluster with xds", xds: base.XDSAddress, inCluster: true, want: true},
		{name: "auto with a kubeconfig", xds: base.XDSAddress, config: "/k", want: true},
		{name: "auto with a client", xds: base.XDSAddress, client: true, want: true},
		{name: "auto without credentials", xds: base.XDSAddress},
		{name: "auto with local files", inCluster: true},
		{name: "on", mode: KubeEnrollOn, xds: base.XDSAddress, want: true},
		{name: "off in cluster", mode: KubeEnrollOff, xds: base.XDSAddress, inCluster: true},
		{name: "on without xds", mode: KubeEnrollOn, err: "needs --xds-address"},
		{name: "unknown mode", mode: "maybe", xds: base.XDSAddress, err: "unknown kube enrollment mode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			cfg.KubeEnroll, cfg.XDSAddress, cfg.Kubeconfig = c.mode, c.xds, c.config
			if c.xds == "" {
				cfg.ConfigFiles = []string{"mesh.yaml"}
			}
			if c.client {
				cfg.KubeClient = fake.NewClientset()
			}
			cfg = cfg.withDefaults()
			err := cfg.Validate()
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("Validate = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Validate = %v", err)
			}
			if got := cfg.kubeEnrollment(c.inCluster); got != c.want {
				t.Errorf("kubeEnrollment = %v, want %v", got, c.want)
			}
		})
	}
}
