package agent

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/test/kubefake"
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
				cfg.KubeClient = kubefake.New()
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

// TestAdminAddrLoopback: the admin API changes state (/logging, /quitquitquit) and serves pprof, so a
// non-loopback --admin-addr is refused unless --admin-allow-remote (issue 14 item 11).
func TestAdminAddrLoopback(t *testing.T) {
	cases := []struct {
		addr   string
		remote bool
		err    bool
	}{
		{addr: "127.0.0.1:15000"},
		{addr: "[::1]:15000"},
		{addr: "127.0.0.2:15000"},
		{addr: "[::ffff:127.0.0.1]:15000"},
		{addr: "0.0.0.0:15000", err: true},
		{addr: "[::]:15000", err: true},
		{addr: "10.0.0.1:15000", err: true},
		{addr: "[::ffff:10.0.0.1]:15000", err: true},
		{addr: "0.0.0.0:15000", remote: true},
		{addr: "10.0.0.1:15000", remote: true},
	}
	for _, c := range cases {
		cfg := Config{NodeName: "n", ConfigFiles: []string{"mesh.yaml"}, CADir: "/ca", AdminAddr: netip.MustParseAddrPort(c.addr),
			AdminAllowRemote: c.remote}.withDefaults()
		err := cfg.Validate()
		if c.err != (err != nil) || (err != nil && !strings.Contains(err.Error(), "--admin-allow-remote")) {
			t.Errorf("admin %s (allow remote %v): Validate = %v, want error %v", c.addr, c.remote, err, c.err)
		}
	}
}

func TestValidHandoffSocket(t *testing.T) {
	cases := []struct {
		path string
		err  string
	}{
		{"", ""},
		{"/var/run/ambit/handoff.sock", ""},
		{"run/handoff.sock", "absolute path"},
		{"/" + strings.Repeat("a", maxHandoffSocketLen), "longer than"},
	}
	for _, c := range cases {
		err := validHandoffSocket(c.path)
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("validHandoffSocket(%q) = %v, want %q", c.path, err, c.err)
		}
	}
}

func TestSameListenAddr(t *testing.T) {
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	cases := []struct {
		got  net.Addr
		want string
		same bool
	}{
		{tcp("[::]:15001"), "[::]:15001", true},
		{tcp("[::]:15001"), "[::]:15006", false},
		{tcp("127.0.0.1:15000"), "127.0.0.1:15000", true},
		{tcp("[::ffff:127.0.0.1]:15000"), "127.0.0.1:15000", true},
		{tcp("0.0.0.0:15020"), "[::]:15020", false},
		{tcp("127.0.0.1:41234"), "127.0.0.1:0", true},
		{&net.UnixAddr{Name: "/x", Net: "unix"}, "127.0.0.1:0", false},
	}
	for _, c := range cases {
		if got := sameListenAddr(c.got, netip.MustParseAddrPort(c.want)); got != c.same {
			t.Errorf("sameListenAddr(%v, %s) = %v, want %v", c.got, c.want, got, c.same)
		}
	}
}

// TestXDSOnDemandConfig: on-demand xDS needs istiod, and its wait gets a default.
func TestXDSOnDemandConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		err  string
	}{
		{name: "files", cfg: Config{NodeName: "n", ConfigFiles: []string{"mesh.yaml"}, CADir: "/ca", XDSOnDemand: true},
			err: "--xds-on-demand needs --xds-address"},
		{name: "istiod", cfg: Config{NodeName: "n", CADir: "/ca", XDSOnDemand: true, XDSAddress: "istiod:15010", XDSPlaintext: true,
			PodName: "z", PodNamespace: "istio-system"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg.withDefaults()
			err := cfg.Validate()
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Errorf("Validate = %v, want %q", err, c.err)
			}
			if cfg.XDSOnDemandTimeout != DefaultXDSOnDemandTimeout {
				t.Errorf("timeout = %v, want the default %v", cfg.XDSOnDemandTimeout, DefaultXDSOnDemandTimeout)
			}
		})
	}
}
