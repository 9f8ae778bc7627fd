package plugin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/argoproj/argo-rollouts/pkg/apis/rollouts/v1alpha1"
	rolloutsPlugin "github.com/argoproj/argo-rollouts/rollout/trafficrouting/plugin/rpc"
	"github.com/argoproj/argo-rollouts/utils/plugin/types"
	goPlugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	adminv1 "github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/gen/fanout/admin/v1"
	fanoutv1 "github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/gen/fanout/v1"
	"github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/plugin"
)

// The demo gateway's route, split label, and admin token (tools/src/demo.rs).
const (
	demoRoute = "demo"
	demoToken = "demo-token"
)

// tools is the fanout-tools binary: $FANOUT_TOOLS, else the workspace's debug build. Without
// it the test is skipped, except in CI.
func tools(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("FANOUT_TOOLS")
	if bin == "" {
		bin, _ = filepath.Abs("../../../target/debug/fanout-tools")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("fanout-tools not found at %s (set FANOUT_TOOLS): %v", bin, err)
		}
		t.Skipf("fanout-tools not found at %s (set FANOUT_TOOLS, or cargo build -p fanout-tools)", bin)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// demoGateway runs `fanout-tools demo` (one subscriber of its own, in cohort stable) and
// returns its gRPC and admin addresses once its admin API shows the route.
func demoGateway(t *testing.T) (listen, admin string) {
	t.Helper()
	bin := tools(t)
	listen, admin = freePort(t), freePort(t)
	cmd := exec.Command(bin, "demo", "--duration", "60", "--subscribers", "1", "--listen", listen, "--admin-listen", admin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s demo: %v", bin, err)
	}
	var (
		mu  sync.Mutex
		log strings.Builder
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := bufio.NewScanner(out)
		for s.Scan() {
			mu.Lock()
			log.WriteString(s.Text() + "\n")
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		_ = cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("fanout-tools demo output:\n%s", log.String())
			mu.Unlock()
		}
	})
	client := adminClient(t, admin)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := client.Status(ctx, &adminv1.StatusRequest{Route: demoRoute})
		cancel()
		if err == nil && len(resp.GetRoutes()) == 1 && cohortSubscribers(resp.GetRoutes()[0], "stable") > 0 {
			return listen, admin
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo gateway's admin API at %s did not show route %q with its subscriber within 60 s: %v", admin, demoRoute, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func adminClient(t *testing.T, address string) adminv1.AdminClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return adminv1.NewAdminClient(conn)
}

func cohortSubscribers(route *adminv1.RouteStatus, cohort string) uint32 {
	for _, c := range route.GetCohorts() {
		if c.GetName() == cohort {
			return c.GetSubscribers()
		}
	}
	return 0
}

// routeStatus is the demo route as the gateway's admin Status shows it.
func routeStatus(t *testing.T, client adminv1.AdminClient) (*adminv1.RouteStatus, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := client.Status(ctx, &adminv1.StatusRequest{Route: demoRoute})
	if err != nil || len(resp.GetRoutes()) != 1 {
		t.Fatalf("Status(%s): %v %v", demoRoute, resp, err)
	}
	return resp.GetRoutes()[0], resp.GetReplica().GetConfigGeneration()
}

// weightsNow is the route's weights, cohorts at 0 left out: "canary=20 stable=80".
func weightsNow(t *testing.T, client adminv1.AdminClient) string {
	t.Helper()
	route, _ := routeStatus(t, client)
	w := plugin.Weights{}
	for _, c := range route.GetCohorts() {
		if c.GetWeight() > 0 {
			w[c.GetName()] = c.GetWeight()
		}
	}
	return w.String()
}

// canarySubscriber subscribes to the demo route with track=canary, acking every delivery,
// until stop is called (which returns once the stream is closed).
func canarySubscriber(t *testing.T, listen string) (stop func()) {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := fanoutv1.NewFanoutClient(conn).Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	hello := &fanoutv1.Hello{Route: demoRoute, PodName: "orders-canary-0", Labels: map[string]string{"track": "canary"}}
	if err := stream.Send(&fanoutv1.SubscribeRequest{Kind: &fanoutv1.SubscribeRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Hello: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil && err != io.EOF {
					t.Logf("canary subscriber: %v", err)
				}
				return
			}
			ids := make([]uint64, 0, len(resp.GetDeliveries()))
			for _, d := range resp.GetDeliveries() {
				ids = append(ids, d.GetAckId())
			}
			if len(ids) > 0 {
				ack := &fanoutv1.SubscribeRequest{Kind: &fanoutv1.SubscribeRequest_Ack{Ack: &fanoutv1.Ack{AckIds: ids}}}
				if err := stream.Send(ack); err != nil {
					return
				}
			}
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
			conn.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

// controller serves impl with go-plugin in this process and dispenses it as the Argo
// Rollouts controller does: every call below crosses the plugin's net/rpc boundary.
func controller(t *testing.T, impl rolloutsPlugin.TrafficRouterPlugin) *rolloutsPlugin.TrafficRouterPluginRPC {
	t.Helper()
	plugins := map[string]goPlugin.Plugin{plugin.RPCName: &rolloutsPlugin.RpcTrafficRouterPlugin{Impl: impl}}
	ctx, cancel := context.WithCancel(context.Background())
	reattach := make(chan *goPlugin.ReattachConfig, 1)
	closed := make(chan struct{})
	go goPlugin.Serve(&goPlugin.ServeConfig{
		HandshakeConfig: plugin.Handshake,
		Plugins:         plugins,
		Test:            &goPlugin.ServeTestConfig{Context: ctx, ReattachConfigCh: reattach, CloseCh: closed},
	})
	var config *goPlugin.ReattachConfig
	select {
	case config = <-reattach:
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin did not start serving")
	}
	client := goPlugin.NewClient(&goPlugin.ClientConfig{HandshakeConfig: plugin.Handshake, Plugins: plugins, Reattach: config})
	rpcClient, err := client.Client()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := rpcClient.Dispense(plugin.RPCName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Kill()
		cancel()
		<-closed
	})
	router, ok := raw.(*rolloutsPlugin.TrafficRouterPluginRPC)
	if !ok {
		t.Fatalf("dispensed %T", raw)
	}
	if err := router.InitPlugin(); err.HasError() {
		t.Fatalf("InitPlugin: %v", err)
	}
	return router
}

func rollout(t *testing.T, config map[string]any) *v1alpha1.Rollout {
	t.Helper()
	raw, err := json.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	ro := &v1alpha1.Rollout{}
	ro.Namespace, ro.Name = "shop", "orders"
	ro.Spec.Strategy.Canary = &v1alpha1.CanaryStrategy{
		CanaryMetadata: &v1alpha1.PodTemplateMetadata{Labels: map[string]string{"track": "canary"}},
		StableMetadata: &v1alpha1.PodTemplateMetadata{Labels: map[string]string{"track": "stable"}},
		TrafficRouting: &v1alpha1.RolloutTrafficRouting{Plugins: map[string]json.RawMessage{plugin.Name: raw}},
	}
	return ro
}

func wantOK(t *testing.T, call string, err types.RpcError) {
	t.Helper()
	if err.HasError() {
		t.Fatalf("%s: %s", call, err.Error())
	}
}

func wantVerified(t *testing.T, router *rolloutsPlugin.TrafficRouterPluginRPC, ro *v1alpha1.Rollout, weight int32, want types.RpcVerified) {
	t.Helper()
	got, err := router.VerifyWeight(ro, weight, nil)
	wantOK(t, fmt.Sprintf("VerifyWeight(%d)", weight), err)
	if got != want {
		t.Fatalf("VerifyWeight(%d) = %v; want %v", weight, got, want)
	}
}

// The plugin driven through its RPC interface as the Rollouts controller drives it, against
// a running gateway (the demo): a canary's setWeight steps become the route's cohort
// weights, a refusal comes back with the gateway's own message, and the steps the gateway
// cannot honour are refused saying why.
func TestTheControllerDrivesACanaryThroughTheGateway(t *testing.T) {
	listen, admin := demoGateway(t)
	client := adminClient(t, admin)
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte(demoToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logged syncBuffer
	impl := &plugin.Plugin{Log: slog.New(slog.NewTextHandler(&logged, nil))}
	router := controller(t, impl)
	if got := router.Type(); got != plugin.Name {
		t.Fatalf("Type() = %q", got)
	}
	ro := rollout(t, map[string]any{"gateways": []string{admin}, "route": demoRoute, "tokenFile": tokenFile})

	if got := weightsNow(t, client); got != "stable=100" {
		t.Fatalf("the demo route starts at %s; want stable=100", got)
	}
	wantOK(t, "UpdateHash", router.UpdateHash(ro, "6d4b8c9f7", "5f7c9d8b6", nil))
	// At 0 the weights are in place: nothing to change, and verified.
	wantOK(t, "SetWeight(0)", router.SetWeight(ro, 0, nil))
	wantVerified(t, router, ro, 0, types.Verified)

	// The canary's pods come up (Argo's canaryMetadata labels them track=canary).
	stopCanary := canarySubscriber(t, listen)
	waitFor(t, "the canary subscriber in Status", func() bool {
		route, _ := routeStatus(t, client)
		return cohortSubscribers(route, "canary") > 0
	})

	wantOK(t, "SetWeight(20)", router.SetWeight(ro, 20, nil))
	if got := weightsNow(t, client); got != "canary=20 stable=80" {
		t.Fatalf("after SetWeight(20) the route's weights are %s; want canary=20 stable=80", got)
	}
	wantVerified(t, router, ro, 20, types.Verified)
	wantVerified(t, router, ro, 50, types.NotVerified)

	// Every reconcile calls SetWeight again: with the weights in place nothing is written.
	_, generation := routeStatus(t, client)
	wantOK(t, "SetWeight(20) again", router.SetWeight(ro, 20, nil))
	if _, again := routeStatus(t, client); again != generation {
		t.Fatalf("a repeated SetWeight(20) changed the config generation %s -> %s", generation, again)
	}

	wantOK(t, "SetWeight(100)", router.SetWeight(ro, 100, nil))
	if got := weightsNow(t, client); got != "canary=100" {
		t.Fatalf("after SetWeight(100) the route's weights are %s; want canary=100", got)
	}
	wantVerified(t, router, ro, 100, types.Verified)
	wantOK(t, "SetWeight(0)", router.SetWeight(ro, 0, nil))
	if got := weightsNow(t, client); got != "stable=100" {
		t.Fatalf("after SetWeight(0) the route's weights are %s; want stable=100", got)
	}
	wantVerified(t, router, ro, 0, types.Verified)

	// Steps the gateway cannot honour are refused, saying why.
	mirror := router.SetMirrorRoute(ro, &v1alpha1.SetMirrorRoute{
		Name: "orders-mirror", Match: []v1alpha1.RouteMatch{{Method: &v1alpha1.StringMatch{Exact: "GET"}}},
	})
	if !mirror.HasError() || !strings.Contains(mirror.Error(), "setMirrorRoute steps are not supported by this fanout-gateway version") {
		t.Fatalf("SetMirrorRoute = %q; want the unsupported-mirror error", mirror.Error())
	}
	header := router.SetHeaderRoute(ro, &v1alpha1.SetHeaderRoute{Name: "orders-header"})
	if !header.HasError() || !strings.Contains(header.Error(), "cohort weights only") {
		t.Fatalf("SetHeaderRoute = %q; want the unsupported-header-route error", header.Error())
	}
	// Experiments' weighted destinations have no cohort.
	exp := router.SetWeight(ro, 20, []v1alpha1.WeightDestination{{ServiceName: "orders-exp", Weight: 10}})
	if !exp.HasError() || !strings.Contains(exp.Error(), "additional destinations (orders-exp=10) are not supported") {
		t.Fatalf("SetWeight with an additional destination = %q", exp.Error())
	}

	// The canary's pods are gone: on a route that holds, the gateway refuses a share for a
	// cohort without a subscriber, and the plugin passes its refusal on unchanged.
	stopCanary()
	waitFor(t, "the canary subscriber gone from Status", func() bool {
		route, _ := routeStatus(t, client)
		return cohortSubscribers(route, "canary") == 0
	})
	refused := router.SetWeight(ro, 30, nil)
	if !refused.HasError() {
		t.Fatal("SetWeight(30) without a canary subscriber succeeded; the gateway should refuse it")
	}
	for _, want := range []string{"FAILED_PRECONDITION", "cohort `canary` would get 30% of route `demo`'s messages but has no subscriber", "weights not changed on any replica"} {
		if !strings.Contains(refused.Error(), want) {
			t.Fatalf("SetWeight(30) refused with %q; want it to contain %q", refused.Error(), want)
		}
	}
	if got := weightsNow(t, client); got != "stable=100" {
		t.Fatalf("after a refused SetWeight(30) the route's weights are %s; want stable=100", got)
	}
	wantVerified(t, router, ro, 30, types.NotVerified)

	wantOK(t, "RemoveManagedRoutes", router.RemoveManagedRoutes(ro))

	// A Rollout whose plugin config lacks the route is refused naming the field.
	bad := rollout(t, map[string]any{"gateways": []string{admin}})
	if err := router.SetWeight(bad, 10, nil); !err.HasError() || !strings.Contains(err.Error(), "route: required") {
		t.Fatalf("SetWeight with no route in the config = %q", err.Error())
	}
	// Without the token the gateway's refusal comes back too.
	noToken := rollout(t, map[string]any{"gateways": []string{admin}, "route": demoRoute})
	if err := router.SetWeight(noToken, 10, nil); !err.HasError() || !strings.Contains(err.Error(), "UNAUTHENTICATED") {
		t.Fatalf("SetWeight with no token = %q", err.Error())
	}

	if strings.Contains(logged.String(), demoToken) {
		t.Fatal("the plugin logged the admin token")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncBuffer is a log destination the plugin's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
