// Command oracle prints a ztunnel config dump with istioctl's own writer
// (istio.io/istio/istioctl/pkg/writer/ztunnel/configdump), the code behind `istioctl ztunnel-config`.
// It produced the goldens in ../ambit and cross-checks ambitctl against istioctl:
//
//	go run . [-o short|json|yaml] [-raw] [-with-headers] <dump.json> workloads|services|policies|certificates|connections|all
//
// It is a separate module under testdata so that Ambit's own module does not depend on istio.io/istio.
package main

import (
	"flag"
	"fmt"
	"os"

	"istio.io/istio/istioctl/pkg/writer/ztunnel/configdump"
)

func main() {
	format := flag.String("o", "short", "output format")
	raw := flag.Bool("raw", false, "connections: show IPs")
	withHeaders := flag.Bool("with-headers", false, "all: banners")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: oracle [flags] <dump.json> <command>")
		os.Exit(2)
	}
	b, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fail(err)
	}
	cw := &configdump.ConfigWriter{Stdout: os.Stdout, FullDump: b}
	if err := cw.Prime(b); err != nil {
		fail(err)
	}
	short := *format == "short"
	switch flag.Arg(1) {
	case "workloads":
		if short {
			err = cw.PrintWorkloadSummary(configdump.WorkloadFilter{})
		} else {
			err = cw.PrintWorkloadDump(configdump.WorkloadFilter{}, *format)
		}
	case "services":
		if short {
			err = cw.PrintServiceSummary(configdump.ServiceFilter{})
		} else {
			err = cw.PrintServiceDump(configdump.ServiceFilter{}, *format)
		}
	case "policies":
		if short {
			err = cw.PrintPolicySummary(configdump.PolicyFilter{})
		} else {
			err = cw.PrintPolicyDump(configdump.PolicyFilter{}, *format)
		}
	case "certificates":
		if short {
			err = cw.PrintSecretSummary()
		} else {
			err = cw.PrintSecretDump(*format)
		}
	case "connections":
		f := configdump.ConnectionsFilter{Raw: *raw}
		if short {
			err = cw.PrintConnectionsSummary(f)
		} else {
			err = cw.PrintConnectionsDump(f, *format)
		}
	case "all":
		if short {
			err = cw.PrintFullSummary(*withHeaders)
		} else {
			err = cw.PrintFullDump(*format)
		}
	default:
		err = fmt.Errorf("unknown command %q", flag.Arg(1))
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "Error:", err)
	os.Exit(1)
}
