package notnets_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/notnets/notnets"
	"github.com/notnets/notnets/internal/gatewaytest"
)

// items is gatewaytest's Items service, which the server process's
// drop-in grpc.Server serves (serveDropIn): each reply says what the
// server saw of the call (the peer's address, its own pid, the "x-tag"
// metadata), and the "x-served-over" response header carries the peer
// address's network.
type items struct {
	gatewaytest.UnimplementedItemsServer
	mu sync.Mutex
	m  map[string]*gatewaytest.Item
}

func newItems() *items { return &items{m: map[string]*gatewaytest.Item{}} }

func (s *items) reply(ctx context.Context, it *gatewaytest.Item) (*gatewaytest.Reply, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return nil, status.Error(codes.Internal, "no peer address")
	}
	if err := grpc.SetHeader(ctx, metadata.Pairs("x-served-over", p.Addr.Network())); err != nil {
		return nil, err
	}
	return &gatewaytest.Reply{Item: it, PeerNetwork: p.Addr.Network(), PeerAddr: p.Addr.String(),
		ServerPid: int32(os.Getpid()), Tag: mdValue(ctx, "x-tag")}, nil
}

func (s *items) Put(ctx context.Context, in *gatewaytest.Item) (*gatewaytest.Reply, error) {
	if in.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "an item needs a name")
	}
	s.mu.Lock()
	s.m[in.GetName()] = proto.Clone(in).(*gatewaytest.Item)
	s.mu.Unlock()
	return s.reply(ctx, in)
}

func (s *items) Get(ctx context.Context, in *gatewaytest.GetRequest) (*gatewaytest.Reply, error) {
	s.mu.Lock()
	it, ok := s.m[in.GetName()]
	s.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no item %q", in.GetName())
	}
	return s.reply(ctx, it)
}

func (s *items) List(in *gatewaytest.ListRequest, stream grpc.ServerStreamingServer[gatewaytest.Item]) error {
	s.mu.Lock()
	var list []*gatewaytest.Item
	for name, it := range s.m {
		if strings.HasPrefix(name, in.GetPrefix()) {
			list = append(list, it)
		}
	}
	s.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].GetName() < list[j].GetName() })
	for _, it := range list {
		if err := stream.Send(it); err != nil {
			return err
		}
	}
	return nil
}

// gatewayItem and gatewayReply are the JSON the gateway writes (protojson,
// field names in lowerCamelCase).
type gatewayItem struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Count int32  `json:"count"`
}

type gatewayReply struct {
	Item        gatewayItem `json:"item"`
	PeerNetwork string      `json:"peerNetwork"`
	PeerAddr    string      `json:"peerAddr"`
	ServerPid   int         `json:"serverPid"`
	Tag         string      `json:"tag"`
}

// TestGatewayOverDropIn: a grpc-gateway v2 mux, registered with the
// generated RegisterItemsHandler on a *grpc.ClientConn that dials through
// notnets.ContextDialer, serves HTTP/JSON for a plain grpc.Server that
// another process serves on notnets.ListenConn: POST with a JSON body, GET
// with a path parameter, a server-streaming GET with a query parameter,
// request metadata from an HTTP header (an incoming header matcher) and
// response metadata as a Grpc-Metadata- header, and gRPC statuses mapped to HTTP codes (InvalidArgument 400,
// NotFound 404). Every reply says the server saw the call come over the
// drop-in tier from this process: a notnets peer address with this
// process's pid, in a server process of another pid.
func TestGatewayOverDropIn(t *testing.T) {
	srv := startServer(t, dropInEnv+"=1")
	cc := dropInClient(t, srv.pool) // the *grpc.ClientConn that RegisterItemsHandler takes
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The gateway forwards the X-Tag request header as "x-tag" metadata:
	// since v2.34 it forwards no Grpc-Metadata- header by default.
	mux := runtime.NewServeMux(runtime.WithIncomingHeaderMatcher(func(key string) (string, bool) {
		if textproto.CanonicalMIMEHeaderKey(key) == "X-Tag" {
			return "x-tag", true
		}
		return runtime.DefaultHeaderMatcher(key)
	}))
	if err := gatewaytest.RegisterItemsHandler(ctx, mux, cc); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(mux)
	defer hs.Close()

	do := func(method, path, body string, header ...string) (*http.Response, []byte) {
		t.Helper()
		var r io.Reader
		if body != "" {
			r = strings.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, hs.URL+path, r)
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := hs.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("%s %s: reading the body: %v", method, path, err)
		}
		return res, b
	}
	// wantReply checks a 200 reply: its item, its tag, and that the call
	// crossed the drop-in tier from this process to the server process.
	wantPeer := (&notnets.Addr{Pool: srv.pool, Name: listenName, PID: os.Getpid()}).String()
	wantReply := func(what string, res *http.Response, b []byte, item gatewayItem, tag string) {
		t.Helper()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s: HTTP %d %s", what, res.StatusCode, b)
		}
		if ct := res.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q, want application/json", what, ct)
		}
		var r gatewayReply
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v in %s", what, err, b)
		}
		if r.Item != item || r.Tag != tag {
			t.Errorf("%s: item %+v, tag %q; want %+v, %q", what, r.Item, r.Tag, item, tag)
		}
		if r.PeerNetwork != "notnets" || r.PeerAddr != wantPeer || r.ServerPid != srv.cmd.Process.Pid || r.ServerPid == os.Getpid() {
			t.Errorf("%s: the server saw peer %s %q in process %d; want notnets %q in process %d (this is %d)",
				what, r.PeerNetwork, r.PeerAddr, r.ServerPid, wantPeer, srv.cmd.Process.Pid, os.Getpid())
		}
		if h := res.Header.Get("Grpc-Metadata-X-Served-Over"); h != "notnets" {
			t.Errorf("%s: response header Grpc-Metadata-X-Served-Over %q, want notnets", what, h)
		}
	}
	// wantStatus checks an error: the HTTP code and the JSON status.
	wantStatus := func(what string, res *http.Response, b []byte, httpCode int, code codes.Code, msg string) {
		t.Helper()
		var st struct {
			Code    codes.Code `json:"code"`
			Message string     `json:"message"`
		}
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("%s: HTTP %d, %v in %s", what, res.StatusCode, err, b)
		}
		if res.StatusCode != httpCode || st.Code != code || st.Message != msg {
			t.Errorf("%s: HTTP %d, status %v %q; want HTTP %d, %v %q", what, res.StatusCode, st.Code, st.Message, httpCode, code, msg)
		}
	}

	// POST: the body is the item; the X-Tag header becomes request
	// metadata.
	apple := gatewayItem{Name: "apple", Value: "red", Count: 3}
	res, b := do("POST", "/v1/items", `{"name":"apple","value":"red","count":3}`, "X-Tag", "post-apple")
	wantReply("POST apple", res, b, apple, "post-apple")
	t.Logf("POST /v1/items: HTTP %d, Grpc-Metadata-X-Served-Over %q, %s", res.StatusCode, res.Header.Get("Grpc-Metadata-X-Served-Over"), b)
	apricot := gatewayItem{Name: "apricot", Value: "orange", Count: 1}
	res, b = do("POST", "/v1/items", `{"name":"apricot","value":"orange","count":1}`)
	wantReply("POST apricot", res, b, apricot, "")
	res, b = do("POST", "/v1/items", `{"name":"banana","value":"yellow"}`)
	wantReply("POST banana", res, b, gatewayItem{Name: "banana", Value: "yellow"}, "")

	// GET with a path parameter: the item the server process stored.
	res, b = do("GET", "/v1/items/apple", "", "X-Tag", "get-apple")
	wantReply("GET apple", res, b, apple, "get-apple")

	// gRPC statuses become HTTP codes, the status as the JSON body.
	res, b = do("GET", "/v1/items/pear", "")
	wantStatus("GET pear", res, b, http.StatusNotFound, codes.NotFound, `no item "pear"`)
	res, b = do("POST", "/v1/items", `{"value":"nameless"}`)
	wantStatus("POST nameless", res, b, http.StatusBadRequest, codes.InvalidArgument, "an item needs a name")

	// Server streaming with a query parameter: one {"result": item} a line.
	res, b = do("GET", "/v1/items?prefix=ap", "")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET ?prefix=ap: HTTP %d %s", res.StatusCode, b)
	}
	var got []gatewayItem
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		var line struct {
			Result *gatewayItem     `json:"result"`
			Error  *json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.Result == nil || line.Error != nil {
			t.Fatalf("GET ?prefix=ap: line %s: %v", sc.Bytes(), err)
		}
		got = append(got, *line.Result)
	}
	if len(got) != 2 || got[0] != apple || got[1] != apricot {
		t.Fatalf("GET ?prefix=ap: %+v, want apple and apricot", got)
	}
}
