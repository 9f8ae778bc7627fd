package plugin

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/argoproj/argo-rollouts/utils/plugin/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	adminv1 "github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/gen/fanout/admin/v1"
)

// fakeReplica is a gateway replica's admin API with one route, as far as the plugin uses it.
type fakeReplica struct {
	adminv1.UnimplementedAdminServer
	mu      sync.Mutex
	name    string
	weights map[string]uint32
	// refuse: SetWeights answers FAILED_PRECONDITION with this message.
	refuse  string
	sets    int
	dryRuns int
	auth    []string
}

func (r *fakeReplica) Status(ctx context.Context, req *adminv1.StatusRequest) (*adminv1.StatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	route := &adminv1.RouteStatus{Name: "orders", SplitLabel: "track"}
	for c, w := range r.weights {
		route.Cohorts = append(route.Cohorts, &adminv1.Cohort{Name: c, Weight: w})
	}
	return &adminv1.StatusResponse{Replica: &adminv1.Replica{Name: r.name}, Routes: []*adminv1.RouteStatus{route}}, nil
}

func (r *fakeReplica) SetWeights(ctx context.Context, req *adminv1.SetWeightsRequest) (*adminv1.SetWeightsResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	md, _ := metadata.FromIncomingContext(ctx)
	r.auth = append(r.auth, md.Get("authorization")...)
	if req.GetForce() {
		return nil, status.Error(codes.InvalidArgument, "the plugin must never force")
	}
	if r.refuse != "" {
		return nil, status.Error(codes.FailedPrecondition, r.refuse)
	}
	if req.GetDryRun() {
		r.dryRuns++
		return &adminv1.SetWeightsResponse{}, nil
	}
	r.sets++
	r.weights = req.GetWeights()
	return &adminv1.SetWeightsResponse{Weights: req.GetWeights()}, nil
}

func (r *fakeReplica) state() (map[string]uint32, int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.weights, r.sets, r.dryRuns
}

// serve runs replicas on loopback ports and returns their addresses.
func serve(t *testing.T, replicas ...*fakeReplica) []string {
	t.Helper()
	var addresses []string
	for _, r := range replicas {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		adminv1.RegisterAdminServer(s, r)
		go func() { _ = s.Serve(l) }()
		t.Cleanup(s.Stop)
		addresses = append(addresses, l.Addr().String())
	}
	return addresses
}

// fixedResolver answers every name with its addresses' IPs (the replicas share one port
// under a headless Service; here they differ, so the test resolves per replica).
type fixedResolver struct{ ips []string }

func (f fixedResolver) LookupHost(ctx context.Context, host string) ([]string, error) {
	if host != "fanout-gateway-headless" {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return f.ips, nil
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestAChangeReachesEveryReplicaOrNone(t *testing.T) {
	a := &fakeReplica{name: "gw-0", weights: map[string]uint32{"stable": 100}}
	b := &fakeReplica{name: "gw-1", weights: map[string]uint32{"stable": 100}}
	addresses := serve(t, a, b)
	token := t.TempDir() + "/token"
	writeFile(t, token, "s3cret\n")
	ro := rolloutWith(map[string]json.RawMessage{Name: mustJSON(t, map[string]any{
		"gateways": addresses, "route": "orders", "tokenFile": token,
	})})
	p := &Plugin{Log: quiet()}

	if err := p.SetWeight(ro, 10, nil); err.HasError() {
		t.Fatalf("SetWeight(10): %v", err)
	}
	for _, r := range []*fakeReplica{a, b} {
		w, sets, dry := r.state()
		if !Weights(w).Same(Weights{"stable": 90, "canary": 10}) || sets != 1 || dry != 1 {
			t.Fatalf("%s: weights %v after %d sets and %d dry runs; want canary=10 stable=90, 1 and 1", r.name, w, sets, dry)
		}
		if len(r.auth) != 2 || r.auth[0] != "Bearer s3cret" {
			t.Fatalf("%s: authorization %q", r.name, r.auth)
		}
	}
	if v, err := p.VerifyWeight(ro, 10, nil); v != types.Verified || err.HasError() {
		t.Fatalf("VerifyWeight(10) = %v, %v", v, err)
	}

	// One replica behind: not verified, and SetWeight brings it along.
	b.mu.Lock()
	b.weights = map[string]uint32{"stable": 100}
	b.mu.Unlock()
	if v, err := p.VerifyWeight(ro, 10, nil); v != types.NotVerified || err.HasError() {
		t.Fatalf("VerifyWeight(10) with a replica behind = %v, %v", v, err)
	}
	if err := p.SetWeight(ro, 10, nil); err.HasError() {
		t.Fatalf("SetWeight(10) again: %v", err)
	}
	if w, _, _ := b.state(); !Weights(w).Same(Weights{"stable": 90, "canary": 10}) {
		t.Fatalf("gw-1 not brought along: %v", w)
	}

	// One replica refuses: no replica changes, and its message comes back.
	b.mu.Lock()
	b.refuse = "cohort `canary` would get 50% of route `orders`'s messages but has no subscriber on replica gw-1"
	b.mu.Unlock()
	_, setsBefore, _ := a.state()
	err := p.SetWeight(ro, 50, nil)
	if !err.HasError() || !strings.Contains(err.Error(), "FAILED_PRECONDITION: cohort `canary` would get 50%") ||
		!strings.Contains(err.Error(), "gateway "+addresses[1]) {
		t.Fatalf("SetWeight(50) with gw-1 refusing = %q", err.Error())
	}
	if w, sets, _ := a.state(); sets != setsBefore || !Weights(w).Same(Weights{"stable": 90, "canary": 10}) {
		t.Fatalf("gw-0 changed although gw-1 refused: %v after %d sets", w, sets)
	}
}

func TestAReplicaThatDoesNotAnswerFailsTheCall(t *testing.T) {
	a := &fakeReplica{name: "gw-0", weights: map[string]uint32{"stable": 100}}
	addresses := serve(t, a)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := l.Addr().String()
	l.Close()
	ro := rolloutWith(map[string]json.RawMessage{Name: mustJSON(t, map[string]any{
		"gateways": []string{addresses[0], gone}, "route": "orders",
	})})
	p := &Plugin{Log: quiet()}
	rpcErr := p.SetWeight(ro, 10, nil)
	if !rpcErr.HasError() || !strings.Contains(rpcErr.Error(), "gateway "+gone+": Status: UNAVAILABLE") {
		t.Fatalf("SetWeight with a replica down = %q", rpcErr.Error())
	}
	if _, sets, dry := a.state(); sets != 0 || dry != 0 {
		t.Fatalf("gw-0 was asked to change (%d sets, %d dry runs) while a replica was down", sets, dry)
	}
}

func TestGatewaysDNSReachesEveryAddress(t *testing.T) {
	a := &fakeReplica{name: "gw-0", weights: map[string]uint32{"stable": 100}}
	address := serve(t, a)[0]
	host, port, _ := net.SplitHostPort(address)
	ro := rolloutWith(map[string]json.RawMessage{Name: mustJSON(t, map[string]any{
		"gatewaysDns": "fanout-gateway-headless:" + port, "route": "orders",
	})})
	p := &Plugin{Log: quiet(), Resolver: fixedResolver{ips: []string{host}}}
	if err := p.SetWeight(ro, 100, nil); err.HasError() {
		t.Fatalf("SetWeight(100): %v", err)
	}
	if w, _, _ := a.state(); len(w) != 2 || w["canary"] != 100 || w["stable"] != 0 {
		t.Fatalf("weights %v; want canary=100 stable=0 (a known cohort stays at 0)", w)
	}

	p.Resolver = fixedResolver{}
	if err := p.SetWeight(ro, 0, nil); !err.HasError() || !strings.Contains(err.Error(), "resolves to no address") {
		t.Fatalf("SetWeight with no replica behind the name = %q", err.Error())
	}
}

func TestStepsTheGatewayCannotHonour(t *testing.T) {
	ro := rolloutWith(map[string]json.RawMessage{Name: json.RawMessage(`{"gatewaysDns": "gw", "route": "orders"}`)})
	p := &Plugin{Log: quiet()}
	if err := p.SetHeaderRoute(ro, nil); !strings.Contains(err.Error(), "setHeaderRoute steps are not supported") {
		t.Errorf("SetHeaderRoute = %q", err.Error())
	}
	if err := p.SetMirrorRoute(ro, nil); err.HasError() {
		t.Errorf("removing a mirror that was never set = %q", err.Error())
	}
	if err := p.RemoveManagedRoutes(rolloutWith(nil)); err.HasError() {
		t.Errorf("RemoveManagedRoutes without a config = %q", err.Error())
	}
	if err := p.UpdateHash(ro, "a", "b", nil); err.HasError() {
		t.Errorf("UpdateHash = %q", err.Error())
	}
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
