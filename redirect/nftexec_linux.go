package redirect

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// nftTimeout bounds one nft invocation.
const nftTimeout = 10 * time.Second

// runNFT runs `nft args...` in the namespace with stdin as its input and returns its standard output.
func runNFT(ctx context.Context, ns nsRunner, stdin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, nftTimeout)
	defer cancel()
	var out []byte
	err := ns.do(func() error {
		cmd := exec.CommandContext(ctx, "nft", args...)
		cmd.Stdin = strings.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		var err error
		out, err = cmd.Output()
		if err != nil {
			return fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	return out, err
}

// applyNFT runs a ruleset transaction (all or nothing).
func applyNFT(ctx context.Context, ns nsRunner, ruleset string) error {
	if ruleset == "" {
		return nil
	}
	_, err := runNFT(ctx, ns, ruleset, "-f", "-")
	return err
}

// haveNFT reports whether the nft binary is available.
func haveNFT() error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("%w: nft binary (package nftables): %w", ErrNotSupported, err)
	}
	return nil
}
