package hbone

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseAuthority(t *testing.T) {
	tests := []struct {
		in   string
		want Authority
		bad  bool
	}{
		{in: "10.0.0.1:80", want: Authority{Host: "10.0.0.1", Port: 80, Addr: netip.MustParseAddrPort("10.0.0.1:80")}},
		{in: "[fd00::1]:15008", want: Authority{Host: "fd00::1", Port: 15008, Addr: netip.MustParseAddrPort("[fd00::1]:15008")}},
		{in: "[::ffff:10.0.0.1]:80", want: Authority{Host: "10.0.0.1", Port: 80, Addr: netip.MustParseAddrPort("10.0.0.1:80")}},
		{in: "reviews.default.svc.cluster.local:9080", want: Authority{Host: "reviews.default.svc.cluster.local", Port: 9080}},
		{in: "a_b-c:1", want: Authority{Host: "a_b-c", Port: 1}},
		{in: "10.0.0.1:65535", want: Authority{Host: "10.0.0.1", Port: 65535, Addr: netip.MustParseAddrPort("10.0.0.1:65535")}},
		{in: "", bad: true},
		{in: "10.0.0.1", bad: true},
		{in: "10.0.0.1:", bad: true},
		{in: "10.0.0.1:0", bad: true},
		{in: "10.0.0.1:65536", bad: true},
		{in: "10.0.0.1:+80", bad: true},
		{in: "10.0.0.1:8o", bad: true},
		{in: ":80", bad: true},
		{in: "fd00::1:80", bad: true},
		{in: "[fd00::1%eth0]:80", bad: true},
		{in: "[10.0.0.1]:80", bad: true},
		{in: "[fd00::1:80", bad: true},
		{in: "1.2.3.256:80", bad: true},
		{in: "-a.b:80", bad: true},
		{in: "a..b:80", bad: true},
		{in: "a b:80", bad: true},
		{in: "a/b:80", bad: true},
		{in: "user@host:80", bad: true},
		{in: strings.Repeat("a", 64) + ":80", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAuthority(tt.in)
			if tt.bad {
				if !errors.Is(err, ErrBadAuthority) {
					t.Fatalf("ParseAuthority(%q) = %+v, %v; want ErrBadAuthority", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseAuthority(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if again, err := ParseAuthority(got.String()); err != nil || again != got {
				t.Fatalf("round trip of %q via %q = %+v, %v", tt.in, got.String(), again, err)
			}
		})
	}
}

func TestBaggage(t *testing.T) {
	full := Baggage{ClusterID: "K1", Namespace: "NS1", WorkloadType: "deployment", WorkloadName: "N1",
		ServiceName: "N2", Revision: "V1", Region: "r", Zone: "z"}
	tests := []struct {
		name   string
		values []string
		want   Baggage
	}{
		{"ztunnel example", []string{"k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,service.version=V1,cloud.region=r,cloud.availability_zone=z"}, full},
		{"multiple header values", []string{"k8s.cluster.name=K1", "k8s.namespace.name=NS1", "k8s.pod.name=p"},
			Baggage{ClusterID: "K1", Namespace: "NS1", WorkloadType: "pod", WorkloadName: "p"}},
		{"empty values clear", []string{"k8s.cluster.name=,k8s.namespace.name=,k8s.deployment.name=,service.name=,service.version="}, Baggage{}},
		{"whitespace and properties", []string{" service.name = svc ;prop=1 , k8s.job.name=j"}, Baggage{ServiceName: "svc", WorkloadType: "job", WorkloadName: "j"}},
		{"unknown keys and junk", []string{"foo=bar,novalue,=x,,k8s.cronjob.name=c"}, Baggage{WorkloadType: "cronjob", WorkloadName: "c"}},
		{"percent escapes", []string{"service.name=a%2Cb%3D,service.version=%zz"}, Baggage{ServiceName: "a,b=", Revision: "%zz"}},
		{"none", nil, Baggage{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseBaggage(tt.values...); got != tt.want {
				t.Fatalf("ParseBaggage = %+v, want %+v", got, tt.want)
			}
		})
	}
	t.Run("format order", func(t *testing.T) {
		want := "k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,service.version=V1,cloud.region=r,cloud.availability_zone=z"
		if got := full.String(); got != want {
			t.Fatalf("String = %q, want %q", got, want)
		}
		if got := (Baggage{Namespace: "ns", WorkloadName: "w"}).String(); got != "k8s.namespace.name=ns,k8s.pod.name=w" {
			t.Fatalf("String = %q", got)
		}
		if got := (Baggage{ServiceName: "a b,c"}).String(); got != "service.name=a%20b%2Cc" {
			t.Fatalf("String = %q", got)
		}
	})
}

func TestForwarded(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   Forwarded
		bad    bool
	}{
		{name: "ztunnel", values: []string{`for="10.0.0.1:4000";host=svc.ns.svc.cluster.local`}, want: Forwarded{For: "10.0.0.1:4000", Host: "svc.ns.svc.cluster.local"}},
		{name: "ipv6 and case", values: []string{`For="[fd00::1]:4000";HOST="a.b"`}, want: Forwarded{For: "[fd00::1]:4000", Host: "a.b"}},
		{name: "first element wins", values: []string{`for=1.1.1.1, for=2.2.2.2;host=x`, `for=3.3.3.3`}, want: Forwarded{For: "1.1.1.1"}},
		{name: "unknown params and spaces", values: []string{` proto=https ; by=_hidden ;for=_x`}, want: Forwarded{For: "_x"}},
		{name: "escapes", values: []string{`host="a\"b"`}, want: Forwarded{Host: `a"b`}},
		{name: "empty header", values: []string{""}, want: Forwarded{}},
		{name: "unquoted colon", values: []string{`for=10.0.0.1:80`}, bad: true},
		{name: "unterminated quote", values: []string{`for="10.0.0.1`}, bad: true},
		{name: "no value", values: []string{`for=`}, bad: true},
		{name: "no equals", values: []string{`for`}, bad: true},
		{name: "duplicate for", values: []string{`for=a;for=b`}, bad: true},
		{name: "duplicate in later element", values: []string{`for=a, host=b;host=c`}, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseForwarded(tt.values...)
			if tt.bad {
				if err == nil {
					t.Fatalf("ParseForwarded = %+v, want error", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseForwarded = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	t.Run("format", func(t *testing.T) {
		f := Forwarded{For: "10.0.0.1:4000", Host: "svc.ns.svc.cluster.local"}
		if got := f.String(); got != `for="10.0.0.1:4000";host=svc.ns.svc.cluster.local` {
			t.Fatalf("String = %q", got)
		}
		if ap, ok := f.ForAddrPort(); !ok || ap != netip.MustParseAddrPort("10.0.0.1:4000") {
			t.Fatalf("ForAddrPort = %v %v", ap, ok)
		}
		if got := (Forwarded{Host: "a b"}).String(); got != `host="a b"` {
			t.Fatalf("String = %q", got)
		}
	})
}

func TestTraceparent(t *testing.T) {
	tp := NewTraceparent()
	s := tp.String()
	if len(s) != 55 || !strings.HasPrefix(s, "00-") || !strings.HasSuffix(s, "-00") {
		t.Fatalf("NewTraceparent().String() = %q", s)
	}
	if got, err := ParseTraceparent(s); err != nil || got != tp {
		t.Fatalf("round trip: %v %v", got, err)
	}
	if NewTraceparent() == tp {
		t.Fatal("two traceparents are equal")
	}
	for _, bad := range []string{
		"",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
		"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
	} {
		if _, err := ParseTraceparent(bad); err == nil {
			t.Errorf("ParseTraceparent(%q) accepted", bad)
		}
	}
	if got, err := ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"); err != nil || got.Flags != 1 || got.SpanID[7] != 0xb7 {
		t.Fatalf("W3C example: %+v %v", got, err)
	}
}
