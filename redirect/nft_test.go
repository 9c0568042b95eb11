package redirect

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (run with -update if intended):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

var testNFT = nftConfig{Table: "ambit", Marks: DefaultMarks, Outbound: 15001, Inbound: 15006, HBONE: 15008, InboundDNAT: 15007, HBONEPort: 15008, NoTrack: true}

func TestRulesets(t *testing.T) {
	noTrackOff := testNFT
	noTrackOff.NoTrack = false
	custom := testNFT
	custom.Table, custom.Marks = "mesh", Marks{Capture: 0x20000, CaptureMask: 0x30000, Own: 0x7, OwnMask: 0xf}
	custom.Outbound, custom.Inbound, custom.HBONE, custom.HBONEPort = 25001, 25006, 25008, 15009
	noDNAT := testNFT
	noDNAT.InboundDNAT = 0
	dns := testNFT
	dns.DNSUDP, dns.DNSTCP = 15053, 15053
	cases := []struct {
		name, file, got string
	}{
		{"tproxy", "tproxy.nft", tproxyRuleset(testNFT)},
		{"tproxy with dns capture", "tproxy-dns.nft", tproxyRuleset(dns)},
		{"ebpf with dns capture", "ebpf-dns.nft", ebpfRuleset(dns)},
		{"tproxy without notrack", "tproxy-nonotrack.nft", tproxyRuleset(noTrackOff)},
		{"tproxy custom ports and marks", "tproxy-custom.nft", tproxyRuleset(custom)},
		{"ebpf", "ebpf.nft", ebpfRuleset(testNFT)},
		{"ebpf without notrack", "ebpf-nonotrack.nft", ebpfRuleset(noTrackOff)},
		{"tproxy without a DNAT listener", "tproxy-nodnat.nft", tproxyRuleset(noDNAT)},
		{"ebpf without a DNAT listener", "ebpf-nodnat.nft", ebpfRuleset(noDNAT)},
		{"delete table", "delete.nft", deleteTableRuleset("ambit")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { golden(t, tc.file, tc.got) })
	}
}

func TestEnrollRuleset(t *testing.T) {
	a4, a6, b4 := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2"), netip.MustParseAddr("10.0.0.3")
	pod := nftPod{UID: "uid-1", Addrs: map[netip.Addr]string{a4: "vp0", a6: "vp0"}}
	cases := []struct {
		name string
		old  *nftPod
		pod  nftPod
		want string
	}{
		{"new pod", nil, pod, `add element inet ambit pods4 { 10.0.0.2 comment "uid-1" }
add element inet ambit podsrc4 { "vp0" . 10.0.0.2 }
add element inet ambit pods6 { fd00::2 comment "uid-1" }
add element inet ambit podsrc6 { "vp0" . fd00::2 }
`},
		{"unchanged", &pod, pod, ""},
		{"address and interface change", &pod, nftPod{UID: "uid-1", Addrs: map[netip.Addr]string{a4: "vp1", b4: "vp1"}}, `delete element inet ambit pods4 { 10.0.0.2 }
delete element inet ambit podsrc4 { "vp0" . 10.0.0.2 }
delete element inet ambit pods6 { fd00::2 }
delete element inet ambit podsrc6 { "vp0" . fd00::2 }
add element inet ambit pods4 { 10.0.0.2 comment "uid-1" }
add element inet ambit podsrc4 { "vp1" . 10.0.0.2 }
add element inet ambit pods4 { 10.0.0.3 comment "uid-1" }
add element inet ambit podsrc4 { "vp1" . 10.0.0.3 }
`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := enrollRuleset("ambit", tc.old, tc.pod); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	want := `delete element inet ambit pods4 { 10.0.0.2 }
delete element inet ambit podsrc4 { "vp0" . 10.0.0.2 }
delete element inet ambit pods6 { fd00::2 }
delete element inet ambit podsrc6 { "vp0" . fd00::2 }
`
	if got := unenrollRuleset("ambit", pod); got != want {
		t.Errorf("unenroll: got\n%s\nwant\n%s", got, want)
	}
}

func TestParseNFTPods(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "list-table.json"))
	if err != nil {
		t.Fatal(err)
	}
	pods, err := parseNFTPods(data)
	if err != nil {
		t.Fatal(err)
	}
	p := pods["uid-1"]
	if len(pods) != 2 || p == nil || p.Addrs[netip.MustParseAddr("10.244.0.2")] != "vp0" || p.Addrs[netip.MustParseAddr("fd00:244::2")] != "vp0" {
		t.Fatalf("parsed %+v", pods)
	}
	if q := pods["uid-2"]; q == nil || len(q.Addrs) != 1 {
		t.Fatalf("parsed %+v", pods)
	}
	for name, bad := range map[string]string{
		"not json":    "{",
		"bad address": `{"nftables":[{"set":{"name":"pods4","elem":[{"elem":{"val":"x","comment":"u"}}]}}]}`,
		"bad concat":  `{"nftables":[{"set":{"name":"podsrc4","elem":[{"concat":["vp0"]}]}}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := parseNFTPods([]byte(bad)); err == nil {
				t.Errorf("parse %s succeeded", bad)
			}
		})
	}
}

func FuzzParseNFTPods(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("testdata", "list-table.json")); err == nil {
		f.Add(data)
	}
	f.Add([]byte(`{"nftables":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		pods, err := parseNFTPods(data)
		if err != nil {
			return
		}
		for uid, p := range pods {
			if p.UID != uid {
				t.Fatalf("pod %q indexed under %q", p.UID, uid)
			}
		}
	})
}
