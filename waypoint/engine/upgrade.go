package engine

import (
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// upgradeAction is what the engine does with a request's Upgrade header.
type upgradeAction uint8

const (
	// upgradeNone: not an upgrade request (no Upgrade, or Connection does not name it); the proxy drops
	// a stray Upgrade header as hop-by-hop.
	upgradeNone upgradeAction = iota
	// upgradeAllow: a WebSocket upgrade, the one type Istio configures (upgrade_configs websocket);
	// relayed as raw bytes after the 101.
	upgradeAllow
	// upgradeStrip: an h2c upgrade; Upgrade, HTTP2-Settings and their Connection tokens are removed
	// and the request continues as HTTP/1.1, as Envoy's HTTP/1 codec does. Relaying it would let a
	// backend that answers 101 turn the stream into a tunnel no later request's policy sees (h2c
	// smuggling).
	upgradeStrip
	// upgradeReject: any other upgrade type; 403, as Envoy answers an upgrade no upgrade_config allows.
	upgradeReject
)

// classifyUpgrade decides what to do with the upgrade h asks for.
func classifyUpgrade(h http.Header) upgradeAction {
	if len(h["Upgrade"]) == 0 || !httpguts.HeaderValuesContainsToken(h["Connection"], "upgrade") {
		return upgradeNone
	}
	var ws, h2c, other int
	for _, v := range h["Upgrade"] {
		for tok := range strings.SplitSeq(v, ",") {
			switch tok = strings.TrimSpace(tok); {
			case tok == "":
			case strings.EqualFold(tok, "websocket"):
				ws++
			case strings.EqualFold(tok, "h2c"):
				h2c++
			default:
				other++
			}
		}
	}
	switch {
	case ws == 1 && h2c == 0 && other == 0:
		return upgradeAllow
	case h2c > 0 && ws == 0 && other == 0:
		return upgradeStrip
	case ws+h2c+other == 0:
		return upgradeNone
	}
	return upgradeReject
}

// stripUpgrade removes an h2c upgrade from h: Upgrade, HTTP2-Settings, and the Connection tokens that
// name them.
func stripUpgrade(h http.Header) {
	h.Del("Upgrade")
	h.Del("Http2-Settings")
	conn := h["Connection"]
	if len(conn) == 0 {
		return
	}
	var keep []string
	for _, v := range conn {
		for tok := range strings.SplitSeq(v, ",") {
			tok = strings.TrimSpace(tok)
			if tok != "" && !strings.EqualFold(tok, "upgrade") && !strings.EqualFold(tok, "http2-settings") {
				keep = append(keep, tok)
			}
		}
	}
	if len(keep) == 0 {
		h.Del("Connection")
		return
	}
	h["Connection"] = []string{strings.Join(keep, ", ")}
}
