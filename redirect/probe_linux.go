package redirect

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Probe checks that mode can run here (ModeAuto: that ModeEBPF can). The error wraps ErrNotSupported and names
// the first missing feature, for example "TCX links (Linux 6.6)". It installs nothing, but mounts bpffs on
// /sys/fs/bpf for ModeEBPF when nothing is mounted there.
func Probe(ctx context.Context, mode Mode, o Options) error {
	o = o.withDefaults()
	switch mode {
	case ModeAuto, ModeEBPF:
		return probeEBPF(o)
	case ModeTPROXY:
		return probeTPROXY(ctx, o, nsRunner{path: o.NetNS})
	}
	return fmt.Errorf("unknown capture mode %q", mode)
}

func missing(feature string, err error) error {
	if err == nil {
		return fmt.Errorf("%w: %s", ErrNotSupported, feature)
	}
	return fmt.Errorf("%w: %s: %w", ErrNotSupported, feature, err)
}

// probeEBPF checks every kernel feature ModeEBPF uses, cheapest first.
func probeEBPF(o Options) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return missing("raising RLIMIT_MEMLOCK for BPF", err)
	}
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		return missing("BPF tc (sched_cls) programs", err)
	}
	helpers := []struct {
		fn   asm.BuiltinFunc
		name string
	}{
		{asm.FnSkcLookupTcp, "bpf_skc_lookup_tcp helper in tc programs (Linux 5.2)"},
		{asm.FnSkRelease, "bpf_sk_release helper in tc programs (Linux 4.20)"},
	}
	for _, h := range helpers {
		if err := features.HaveProgramHelper(ebpf.SchedCLS, h.fn); err != nil {
			return missing(h.name, err)
		}
	}
	if err := features.HaveMapType(ebpf.SockMap); err != nil {
		return missing("SOCKMAP maps (Linux 4.14)", err)
	}
	if err := features.HaveProgramType(ebpf.SkLookup); err != nil {
		return missing("BPF sk_lookup programs (Linux 5.9)", err)
	}
	if err := features.HaveProgramHelper(ebpf.SkLookup, asm.FnSkAssign); err != nil {
		return missing("bpf_sk_assign helper in sk_lookup programs (Linux 5.9)", err)
	}
	if err := probeTCX(); err != nil {
		return err
	}
	if err := ensureBPFFS(o.PinDir); err != nil {
		return err
	}
	return nil
}

// probeTCX asks the kernel to attach a trivial program with TCX to an interface index that cannot exist: a
// kernel with TCX refuses the index, one without it makes cilium/ebpf report ErrNotSupported.
func probeTCX() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, -1, asm.DWord), asm.Return()},
		License:      "Dual BSD/GPL",
	})
	if err != nil {
		return missing("loading a tc program", err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: 1 << 30, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		l.Close()
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return missing("TCX links (Linux 6.6)", err)
	}
	return nil
}

// ensureBPFFS makes sure dir is on a bpffs, mounting one on /sys/fs/bpf if nothing is mounted there, and
// creates dir.
func ensureBPFFS(dir string) error {
	const root = "/sys/fs/bpf"
	if strings.HasPrefix(filepath.Clean(dir)+"/", root+"/") && !isBPFFS(root) {
		if err := unix.Mount("bpffs", root, "bpf", 0, "mode=0700"); err != nil {
			return missing("bpffs mounted on "+root, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	if !isBPFFS(dir) {
		return missing("bpffs at "+dir, nil)
	}
	return nil
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// probeTPROXY checks the nft binary and, with a dry run of the ruleset in the namespace, the kernel's nftables
// tproxy, socket and notrack support.
func probeTPROXY(ctx context.Context, o Options, ns nsRunner) error {
	if err := haveNFT(); err != nil {
		return err
	}
	c := nftConfig{Table: o.NFTTable, Marks: o.Marks, Outbound: 15001, Inbound: 15006, HBONE: 15008, InboundDNAT: 15007, HBONEPort: o.HBONEPort, NoTrack: !o.DisableNoTrack}
	if _, err := runNFT(ctx, ns, tproxyRuleset(c), "-c", "-f", "-"); err != nil {
		return missing("nftables tproxy, socket and notrack expressions (Linux 4.19)", err)
	}
	return nil
}
