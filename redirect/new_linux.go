package redirect

import (
	"context"
	"errors"
	"fmt"
)

// New installs capture (or re-adopts what an earlier process installed) in the node namespace and returns the
// Redirector that manages it. With ModeAuto it uses ModeEBPF when Probe passes and otherwise logs why and uses
// ModeTPROXY. Switching modes across restarts removes the other mode's capture (and its enrollment).
func New(ctx context.Context, o Options) (Redirector, error) {
	o = o.withDefaults()
	if err := o.validate(false); err != nil {
		return nil, err
	}
	ns := nsRunner{path: o.NetNS}
	switch o.Mode {
	case ModeEBPF:
		return newEBPF(ctx, o, ns)
	case ModeTPROXY:
		return newTPROXY(ctx, o, ns)
	}
	r, err := newEBPF(ctx, o, ns)
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, ErrNotSupported) {
		return nil, err
	}
	o.Logger.Warn("eBPF capture unavailable, using TPROXY", "component", "redirect", "reason", err)
	// Pinned maps may have been created before the missing feature was found.
	if cerr := cleanupEBPF(o); cerr != nil {
		return nil, errors.Join(err, cerr)
	}
	r2, err2 := newTPROXY(ctx, o, ns)
	if err2 != nil {
		return nil, fmt.Errorf("no capture mode available: ebpf: %w; tproxy: %w", err, err2)
	}
	return r2, nil
}

// Cleanup removes everything New installed in either mode, whether or not a Redirector is running: pinned TCX
// links (detaching the program), pinned maps, the nftables table, the policy rules and the local routes. It is
// idempotent. Connections the agent holds break.
func Cleanup(ctx context.Context, o Options) error {
	o = o.withDefaults()
	if err := o.validate(true); err != nil {
		return err
	}
	ns := nsRunner{path: o.NetNS}
	var errs []error
	if err := cleanupEBPF(o); err != nil {
		errs = append(errs, err)
	}
	if haveNFT() == nil {
		if err := applyNFT(ctx, ns, deleteTableRuleset(o.NFTTable)); err != nil {
			errs = append(errs, fmt.Errorf("remove nftables table: %w", err))
		}
	}
	h, err := ns.handle()
	if err != nil {
		errs = append(errs, err)
	} else {
		if err := removeRouting(h, o); err != nil {
			errs = append(errs, err)
		}
		h.Close()
	}
	return errors.Join(errs...)
}
