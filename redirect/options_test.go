package redirect

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAuto, "auto": ModeAuto, "ebpf": ModeEBPF, "tproxy": ModeTPROXY} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseMode("iptables"); err == nil {
		t.Error("ParseMode(iptables) succeeded")
	}
}

func TestOptionsDefaultsAndValidation(t *testing.T) {
	d := Options{}.withDefaults()
	if d.Mode != ModeAuto || d.PinDir != DefaultPinDir || d.NFTTable != DefaultNFTTable || d.RouteTable != DefaultRouteTable ||
		d.RulePriority != DefaultRulePriority || d.Marks != DefaultMarks || d.DrainTimeout != DefaultDrainTimeout ||
		d.HBONEPort != DefaultHBONEPort || d.Logger == nil {
		t.Fatalf("defaults = %+v", d)
	}
	if err := d.validate(true); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if err := d.validate(false); err == nil {
		t.Fatal("validate without listeners succeeded")
	}
	cases := map[string]func(*Options){
		"unknown mode":            func(o *Options) { o.Mode = "x" },
		"capture outside mask":    func(o *Options) { o.Marks.Capture = 0x1000 },
		"zero own mark":           func(o *Options) { o.Marks.Own, o.Marks.OwnMask = 0, 0 },
		"own matches capture":     func(o *Options) { o.Marks.Own, o.Marks.OwnMask = 0x400, 0xfff },
		"reserved table":          func(o *Options) { o.RouteTable = 254 },
		"priority after main":     func(o *Options) { o.RulePriority = 32766 },
		"bad nft table name":      func(o *Options) { o.NFTTable = "a b" },
		"too long nft table name": func(o *Options) { o.NFTTable = "abcdefghijklmnopqrstuvwxyz0123456789" },
	}
	for name, mut := range cases {
		t.Run(name, func(t *testing.T) {
			o := Options{}.withDefaults()
			mut(&o)
			if err := o.validate(true); err == nil {
				t.Errorf("validate(%+v) succeeded", o)
			}
		})
	}
}

func TestPodValidate(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.2")
	cases := []struct {
		name string
		pod  Pod
		ok   bool
	}{
		{"valid", Pod{UID: "0b3e-uid", IPs: []netip.Addr{ip}}, true},
		{"valid dual stack", Pod{UID: "ns/name:1_a.b", IPs: []netip.Addr{ip, netip.MustParseAddr("fd00::2")}}, true},
		{"no uid", Pod{IPs: []netip.Addr{ip}}, false},
		{"uid too long", Pod{UID: string(make([]byte, MaxUIDLen+1)), IPs: []netip.Addr{ip}}, false},
		{"uid with a quote", Pod{UID: `a"b`, IPs: []netip.Addr{ip}}, false},
		{"no addresses", Pod{UID: "u"}, false},
		{"invalid address", Pod{UID: "u", IPs: []netip.Addr{{}}}, false},
		{"loopback", Pod{UID: "u", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, false},
		{"unspecified", Pod{UID: "u", IPs: []netip.Addr{netip.IPv6Unspecified()}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.pod.validate()
			if tc.ok != (err == nil) {
				t.Fatalf("validate = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidPod) {
				t.Errorf("error %v does not wrap ErrInvalidPod", err)
			}
		})
	}
}

func TestEnrolledList(t *testing.T) {
	a, b := netip.MustParseAddr("fd00::2"), netip.MustParseAddr("10.0.0.2")
	got := enrolledList(map[string][]netip.Addr{"z": {a, b}, "a": {b}, "empty": {}}, map[string]string{"z": "ns/z"})
	if len(got) != 2 || got[0].UID != "a" || got[1].UID != "z" || got[1].Name != "ns/z" || got[1].IPs[0] != b || got[1].IPs[1] != a {
		t.Fatalf("enrolledList = %+v", got)
	}
}
