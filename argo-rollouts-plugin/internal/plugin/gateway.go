package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	adminv1 "github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/gen/fanout/admin/v1"
)

// replica is one gateway replica's admin API.
type replica struct {
	address string
	conn    *grpc.ClientConn
	admin   adminv1.AdminClient
}

// fleet is every replica of a Rollout's gateway, connected for one call of the controller
// (the configuration is per Rollout and may change between calls).
type fleet struct {
	route    string
	token    string
	replicas []replica
}

// resolver looks up the addresses of a gatewaysDns name.
type resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// connect resolves the Rollout's gateway replicas and sets up a connection to each (made on
// the first call). A name that resolves to nothing, an unreadable token or CA file, is an
// error naming the field.
func connect(ctx context.Context, cfg Config, lookup resolver) (*fleet, error) {
	token, err := readToken(cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	type target struct{ address, serverName string }
	var targets []target
	if cfg.GatewaysDNS != "" {
		host, port, err := splitHostPort(cfg.GatewaysDNS)
		if err != nil {
			return nil, fmt.Errorf("gatewaysDns: %w", err)
		}
		ips, err := lookup.LookupHost(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("gatewaysDns %q does not resolve: %w", cfg.GatewaysDNS, err)
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("gatewaysDns %q resolves to no address (no gateway replica is ready?)", cfg.GatewaysDNS)
		}
		sort.Strings(ips)
		for _, ip := range ips {
			targets = append(targets, target{net.JoinHostPort(ip, port), host})
		}
	} else {
		for i, g := range cfg.Gateways {
			host, port, err := splitHostPort(g)
			if err != nil {
				return nil, fmt.Errorf("gateways[%d]: %w", i, err)
			}
			targets = append(targets, target{net.JoinHostPort(host, port), host})
		}
	}
	f := &fleet{route: cfg.Route, token: token}
	for _, t := range targets {
		creds := insecure.NewCredentials()
		if cfg.TLSCAFile != "" {
			creds, err = credentials.NewClientTLSFromFile(cfg.TLSCAFile, t.serverName)
			if err != nil {
				f.close()
				return nil, fmt.Errorf("tlsCaFile %q: %w", cfg.TLSCAFile, err)
			}
		}
		conn, err := grpc.NewClient("passthrough:///"+t.address, grpc.WithTransportCredentials(creds))
		if err != nil {
			f.close()
			return nil, fmt.Errorf("gateway %s: %w", t.address, err)
		}
		f.replicas = append(f.replicas, replica{address: t.address, conn: conn, admin: adminv1.NewAdminClient(conn)})
	}
	return f, nil
}

func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("tokenFile: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("tokenFile %q is empty", path)
	}
	return token, nil
}

func (f *fleet) close() {
	for _, r := range f.replicas {
		_ = r.conn.Close()
	}
}

// outgoing is ctx with the admin token, when there is one.
func (f *fleet) outgoing(ctx context.Context) context.Context {
	if f.token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+f.token)
}

// view is the route as every replica's Status shows it.
type view struct {
	// weights is each replica's weights, in the order of fleet.replicas.
	weights []Weights
	// known is the cohorts every replica lists (weighted, or with subscribers).
	known map[string]bool
}

// view asks every replica for the route's weights and cohorts now. Any replica that does not
// answer, or does not have the route, is an error: a change must reach every replica.
func (f *fleet) view(ctx context.Context) (view, error) {
	out := make([]Weights, len(f.replicas))
	seen := map[string]int{}
	var errs []error
	for i, r := range f.replicas {
		resp, err := r.admin.Status(f.outgoing(ctx), &adminv1.StatusRequest{Route: f.route})
		if err != nil {
			errs = append(errs, replicaError(r.address, "Status", err))
			continue
		}
		var route *adminv1.RouteStatus
		for _, rs := range resp.GetRoutes() {
			if rs.GetName() == f.route {
				route = rs
			}
		}
		if route == nil {
			errs = append(errs, fmt.Errorf("gateway %s (%s) has no route %q", r.address, resp.GetReplica().GetName(), f.route))
			continue
		}
		if route.GetSplitLabel() == "" {
			errs = append(errs, fmt.Errorf("gateway %s: route %q has no split_label, so it has no cohorts to weight", r.address, f.route))
			continue
		}
		w := Weights{}
		for _, c := range route.GetCohorts() {
			if c.GetWeight() > 0 {
				w[c.GetName()] = c.GetWeight()
			}
			seen[c.GetName()]++
		}
		out[i] = w
	}
	known := map[string]bool{}
	for cohort, n := range seen {
		if n == len(f.replicas) {
			known[cohort] = true
		}
	}
	return view{weights: out, known: known}, errors.Join(errs...)
}

// setWeights changes the route's weights on every replica or on none: each replica checks
// the change first (a dry run, the same refusals), and only when all accept it is it made
// on each. Never forced: a refusal (a canary cohort with no subscriber on a route that
// holds, a rollout of the gateway's own running on the route) comes back as the error,
// with the gateway's message.
func (f *fleet) setWeights(ctx context.Context, w Weights, known map[string]bool) error {
	ask := func(dryRun bool) error {
		var errs []error
		for _, r := range f.replicas {
			req := &adminv1.SetWeightsRequest{Route: f.route, Weights: w.Request(known), DryRun: dryRun}
			if _, err := r.admin.SetWeights(f.outgoing(ctx), req); err != nil {
				errs = append(errs, replicaError(r.address, "SetWeights", err))
			}
		}
		return errors.Join(errs...)
	}
	if err := ask(true); err != nil {
		return fmt.Errorf("route %q weights not changed on any replica: %w", f.route, err)
	}
	if err := ask(false); err != nil {
		return fmt.Errorf("route %q weights changed on some replicas only (the next reconcile retries): %w", f.route, err)
	}
	return nil
}

// replicaError is a failed call as the gateway answered it: "gateway ADDR: SetWeights:
// FAILED_PRECONDITION: <the gateway's message>".
func replicaError(address, call string, err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("gateway %s: %s: %w", address, call, err)
	}
	return fmt.Errorf("gateway %s: %s: %s: %s", address, call, codeName(s.Code().String()), s.Message())
}

// codeName is a gRPC code as the gateway and grpcurl print it: FailedPrecondition ->
// FAILED_PRECONDITION.
func codeName(camel string) string {
	var b strings.Builder
	for i, r := range camel {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}
