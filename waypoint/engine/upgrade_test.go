package engine

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

func TestClassifyUpgrade(t *testing.T) {
	tests := []struct {
		name string
		h    http.Header
		want upgradeAction
	}{
		{"no upgrade", http.Header{}, upgradeNone},
		{"upgrade without connection token", http.Header{"Upgrade": {"h2c"}}, upgradeNone},
		{"connection upgrade without upgrade header", http.Header{"Connection": {"Upgrade"}}, upgradeNone},
		{"websocket", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, upgradeAllow},
		{"websocket any case, connection list", http.Header{"Connection": {"keep-alive, upgrade"}, "Upgrade": {"WebSocket"}}, upgradeAllow},
		{"h2c", http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}, "Http2-Settings": {"AAMAAABkAAQAAP__"}}, upgradeStrip},
		{"h2c upper case", http.Header{"Connection": {"upgrade"}, "Upgrade": {"H2C"}}, upgradeStrip},
		{"other type", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"echo"}}, upgradeReject},
		{"websocket and h2c", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket, h2c"}}, upgradeReject},
		{"two websockets", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket", "websocket"}}, upgradeReject},
		{"empty upgrade value", http.Header{"Connection": {"Upgrade"}, "Upgrade": {" , "}}, upgradeNone},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := classifyUpgrade(tc.h); got != tc.want {
				t.Errorf("classifyUpgrade = %d, want %d", got, tc.want)
			}
		})
	}
	h := http.Header{"Connection": {"keep-alive, Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}, "Http2-Settings": {"x"}}
	stripUpgrade(h)
	if len(h) != 1 || h.Get("Connection") != "keep-alive" {
		t.Errorf("stripped headers = %v, want Connection: keep-alive only", h)
	}
}

// TestEngineUpgrades: h2c smuggling (issue 14 item 7). A backend that answers 101 to an h2c upgrade and
// then serves whatever comes next must never see the upgrade, never become a tunnel, and a path that
// policy denies, sent next on the same client connection, still gets 403. WebSocket still passes; other
// upgrade types get 403.
func TestEngineUpgrades(t *testing.T) {
	tu.CheckGoroutines(t)
	var mu sync.Mutex
	seen := map[string]http.Header{}
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path] = r.Header.Clone()
		mu.Unlock()
		switch r.URL.Path {
		case "/h2c", "/ws":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			up := "h2c"
			if r.URL.Path == "/ws" {
				up = "websocket"
			}
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + up + "\r\n\r\n")
			brw.Flush()
			if up == "websocket" {
				io.Copy(c, brw) // echo
				return
			}
			// A backend that took the upgrade answers the next request itself: whatever the client
			// sends now bypasses the waypoint's policy if the 101 was relayed.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if req, err := http.ReadRequest(brw.Reader); err == nil {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nsmuggled!")
				_ = req.Body.Close()
			}
			return
		}
		io.WriteString(w, "ok")
	}))
	h.eng.Update(&model.Config{Authz: []*model.AuthzPolicy{{Namespace: "app", Name: "deny", Action: model.ActionDeny,
		Targets: []model.TargetRef{{Kind: model.KindService, Namespace: "app", Name: "web"}},
		Rules:   []model.AuthzRule{{To: []model.Operation{{Paths: []string{"/deny"}}}}}}}})

	conn := func(t *testing.T) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	read := func(t *testing.T, br *bufio.Reader) (int, string) {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return resp.StatusCode, ""
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}

	t.Run("h2c upgrade is stripped and a later DENY path still gets 403", func(t *testing.T) {
		c, br := conn(t)
		io.WriteString(c, "GET /h2c HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
		code, _ := read(t, br)
		if code == http.StatusSwitchingProtocols {
			t.Errorf("the backend's 101 to an h2c upgrade reached the client")
		}
		io.WriteString(c, "GET /deny HTTP/1.1\r\nHost: web\r\n\r\n")
		if code, body := read(t, br); code != http.StatusForbidden {
			t.Errorf("DENY path after the h2c upgrade: %d %q, want 403", code, body)
		}
		mu.Lock()
		got := seen["/h2c"]
		mu.Unlock()
		if got == nil {
			t.Fatal("the request never reached the backend")
		}
		if got.Get("Upgrade") != "" || got.Get("Http2-Settings") != "" || strings.Contains(strings.ToLower(got.Get("Connection")), "upgrade") {
			t.Errorf("the backend saw the upgrade: %v", got)
		}
	})

	t.Run("WebSocket passes", func(t *testing.T) {
		c, br := conn(t)
		io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		if code, body := read(t, br); code != http.StatusSwitchingProtocols {
			t.Fatalf("WebSocket upgrade: %d %q", code, body)
		}
		io.WriteString(c, "ping\n")
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Errorf("echo over the upgraded stream: %q %v", line, err)
		}
	})

	t.Run("other upgrade types are refused", func(t *testing.T) {
		c, br := conn(t)
		io.WriteString(c, "GET /ok HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		if code, body := read(t, br); code != http.StatusForbidden {
			t.Errorf("Upgrade: echo: %d %q, want 403", code, body)
		}
	})

	t.Run("a 101 to a plain request is never relayed", func(t *testing.T) {
		c, br := conn(t)
		io.WriteString(c, "GET /h2c HTTP/1.1\r\nHost: web\r\n\r\n")
		if code, _ := read(t, br); code != http.StatusBadGateway {
			t.Errorf("unsolicited 101: %d, want 502", code)
		}
		io.WriteString(c, "GET /deny HTTP/1.1\r\nHost: web\r\n\r\n")
		if code, body := read(t, br); code != http.StatusForbidden {
			t.Errorf("DENY path after an unsolicited 101: %d %q, want 403", code, body)
		}
	})
}
