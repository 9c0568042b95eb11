package engine

import (
	"context"
	"io"
	"mime"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// forward sends r upstream and relays the response: the engine's own reverse proxy, doing what
// httputil.ReverseProxy (Rewrite mode) does, without its per-request allocations. The outgoing
// request is a shallow copy of r kept in rs, and it shares r's header map, edited in place (the
// request's own map: nothing reads the client's hop-by-hop or forwarding headers after this point,
// and the request's header size is counted first). Upgrades keep httputil.ReverseProxy (forwardUpgrade),
// which relays the tunnel after the 101.
//
// As ReverseProxy: hop-by-hop headers (and those Connection names) are removed both ways, "te:
// trailers" is kept when the client sent it, client Forwarded and X-Forwarded-* headers are replaced,
// unparsable query parameters are dropped, no default User-Agent is added, 1xx responses are relayed,
// trailers are relayed (announced or not), a response of unknown length or an event stream is flushed
// after each write, and a failed body copy aborts the response (http.ErrAbortHandler).
func (rs *reqState) forward(w http.ResponseWriter, r *http.Request) {
	rs.reqHeaderBytes, rs.reqHeaderCounted = headerSize(r.Header), true
	out := &rs.out
	*out = *r
	rs.outURL = *r.URL
	out.URL = &rs.outURL
	if r.ContentLength == 0 {
		out.Body = nil
	} else if out.Body != nil {
		rs.ncBody.rc = out.Body // the transport must not close the client's body
		out.Body = &rs.ncBody
	}
	out.Close = false
	h := out.Header
	te := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	removeHopByHop(h)
	if te {
		h["Te"] = []string{"trailers"}
	}
	delete(h, "Forwarded")
	delete(h, "X-Forwarded-For")
	delete(h, "X-Forwarded-Host")
	delete(h, "X-Forwarded-Proto")
	out.URL.RawQuery = cleanQueryParams(out.URL.RawQuery)
	rs.rewrite(r, out)
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = rs.hv[3:4:4] // "": no default Go User-Agent upstream
	}
	rs.on1xx = func(code int, hdr http.Header) {
		dst := w.Header()
		copyHeader(dst, hdr)
		w.WriteHeader(code)
		clear(dst)
	}

	resp, err := rs.RoundTrip(out)
	if err != nil {
		rs.proxyError(w, out, err)
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body.Close()
		rs.proxyError(w, out, errUnexpectedUpgrade) // no upgrade was allowed on this request
		return
	}
	removeHopByHop(resp.Header)
	if err := rs.modifyResponse(resp); err != nil {
		resp.Body.Close()
		rs.proxyError(w, out, err)
		return
	}
	dst := w.Header()
	for k, vv := range resp.Header {
		if len(dst[k]) == 0 {
			dst[k] = vv // the response's own map: no copy needed
		} else {
			dst[k] = append(dst[k], vv...)
		}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	flush := streamingResponse(resp)
	if flush {
		http.NewResponseController(w).Flush() // headers go out before the first body bytes
	}
	if err := rs.copyResponse(w, resp.Body, flush); err != nil {
		resp.Body.Close()
		panic(http.ErrAbortHandler) // the response is cut; the server resets the stream or closes the connection
	}
	resp.Body.Close()
	if len(resp.Trailer) > 0 {
		http.NewResponseController(w).Flush() // force chunking: trailers follow
	}
	if len(resp.Trailer) == announced {
		copyHeader(dst, resp.Trailer)
		return
	}
	for k, vv := range resp.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// forwardUpgrade forwards an allowed (WebSocket) upgrade through httputil.ReverseProxy, which relays
// the connection after the 101.
func (rs *reqState) forwardUpgrade(w http.ResponseWriter, r *http.Request) {
	rs.reqHeaderBytes, rs.reqHeaderCounted = headerSize(r.Header), true
	p := &httputil.ReverseProxy{
		Rewrite:        func(pr *httputil.ProxyRequest) { pr.Out.URL.Scheme = "http"; rs.rewrite(pr.In, pr.Out) },
		Transport:      rs,
		BufferPool:     bufferPool{},
		ModifyResponse: rs.modifyResponse,
		ErrorHandler:   rs.proxyError,
		ErrorLog:       rs.e.proxyLog,
	}
	p.ServeHTTP(w, r)
}

// copyResponse copies the response body to w through a pooled buffer, flushing after each write
// when flush is set.
func (rs *reqState) copyResponse(w http.ResponseWriter, body io.Reader, flush bool) error {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	var fl http.Flusher
	if flush {
		fl, _ = w.(http.Flusher)
	}
	for {
		nr, rerr := body.Read(buf)
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			if werr != nil {
				return werr
			}
			if nw != nr {
				return io.ErrShortWrite
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			if rerr != context.Canceled {
				rs.e.log.Debug("read error during body copy", "err", rerr)
			}
			return rerr
		}
	}
}

// streamingResponse reports whether the response is flushed after each write: an event stream, or
// a body of unknown length (gRPC, streamed responses), as ReverseProxy does.
func streamingResponse(resp *http.Response) bool {
	if resp.ContentLength == -1 {
		return true
	}
	ct := resp.Header.Get("Content-Type")
	if len(ct) < len("text/event-stream") || !strings.EqualFold(ct[:len("text/event-stream")], "text/event-stream") {
		return false
	}
	base, _, _ := mime.ParseMediaType(ct)
	return base == "text/event-stream"
}

// hopHeaders are the hop-by-hop headers removed when forwarding (RFC 9110 section 7.6.1 and the
// legacy ones ReverseProxy removes), in canonical form.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopByHop removes the hop-by-hop headers from h, and those its Connection header names.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		delete(h, f)
	}
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// cleanQueryParams drops query parameters that do not parse (a ';' separator or a bad escape), as
// ReverseProxy does, so the upstream cannot read parameters the waypoint's routing did not.
func cleanQueryParams(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// noCloseBody hides Close from the transport: the client's request body stays the server's to close.
type noCloseBody struct{ rc io.ReadCloser }

func (b *noCloseBody) Read(p []byte) (int, error) { return b.rc.Read(p) }
func (b *noCloseBody) Close() error               { return nil }
