// Package plugin is the Argo Rollouts traffic router for fanout-gateway: a Rollout's canary
// weight becomes the cohort weights of a gateway route, set through the gateway's admin API
// on every replica.
package plugin

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/argoproj/argo-rollouts/pkg/apis/rollouts/v1alpha1"
	"github.com/argoproj/argo-rollouts/utils/plugin/types"
)

// DefaultCallTimeout bounds one controller call: resolving the replicas and every admin
// call it makes.
const DefaultCallTimeout = 20 * time.Second

// Plugin implements the traffic router plugin interface (rpc.TrafficRouterPlugin). The zero
// value works: it logs with slog.Default, resolves with net.DefaultResolver and gives each
// controller call DefaultCallTimeout. Every method is idempotent, as the controller calls
// them on every reconcile.
type Plugin struct {
	// Log receives a line per change and per refusal; nil: slog.Default().
	Log *slog.Logger
	// Resolver looks up gatewaysDns; nil: net.DefaultResolver.
	Resolver interface {
		LookupHost(ctx context.Context, host string) ([]string, error)
	}
	// CallTimeout bounds one controller call; 0: DefaultCallTimeout.
	CallTimeout time.Duration
}

func (p *Plugin) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}

func (p *Plugin) resolver() resolver {
	if p.Resolver != nil {
		return p.Resolver
	}
	return net.DefaultResolver
}

// call runs fn against the Rollout's gateway replicas within the call timeout.
func (p *Plugin) call(ro *v1alpha1.Rollout, fn func(ctx context.Context, cfg Config, f *fleet) error) error {
	cfg, err := ConfigFrom(ro)
	if err != nil {
		return err
	}
	timeout := p.CallTimeout
	if timeout == 0 {
		timeout = DefaultCallTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	f, err := connect(ctx, cfg, p.resolver())
	if err != nil {
		return err
	}
	defer f.close()
	return fn(ctx, cfg, f)
}

// rpcError is err as the controller takes it: empty for success.
func rpcError(err error) types.RpcError {
	if err == nil {
		return types.RpcError{}
	}
	return types.RpcError{ErrorString: err.Error()}
}

func rolloutName(ro *v1alpha1.Rollout) string {
	if ro == nil {
		return ""
	}
	return ro.Namespace + "/" + ro.Name
}

// InitPlugin has nothing to set up: connections are made per call, as the configuration is
// per Rollout.
func (p *Plugin) InitPlugin() types.RpcError {
	return types.RpcError{}
}

// Type is the plugin's name.
func (p *Plugin) Type() string {
	return Name
}

// UpdateHash has nothing to do: the gateway follows the pods by their track label (the
// Rollout's canaryMetadata and stableMetadata), not by ReplicaSet hash.
func (p *Plugin) UpdateHash(ro *v1alpha1.Rollout, canaryHash, stableHash string, additional []v1alpha1.WeightDestination) types.RpcError {
	return types.RpcError{}
}

// SetWeight sets the route's weights to the mapping of desired (WeightsFor) on every
// replica, unless every replica has them already. A replica that refuses the change (e.g.
// FAILED_PRECONDITION: the canary cohort has no subscriber yet on a route that holds) makes
// it an error carrying the gateway's message, and no replica changes; the controller calls
// again on its next reconcile.
func (p *Plugin) SetWeight(ro *v1alpha1.Rollout, desired int32, additional []v1alpha1.WeightDestination) types.RpcError {
	err := p.call(ro, func(ctx context.Context, cfg Config, f *fleet) error {
		want, err := WeightsFor(cfg, desired, additional)
		if err != nil {
			return err
		}
		now, err := f.view(ctx)
		if err != nil {
			return err
		}
		if allSame(want, now.weights) {
			return nil
		}
		if err := f.setWeights(ctx, want, now.known); err != nil {
			p.log().Warn("weights not set", "rollout", rolloutName(ro), "route", cfg.Route, "weights", want.String(), "error", err)
			return err
		}
		p.log().Info("weights set", "rollout", rolloutName(ro), "route", cfg.Route, "weights", want.String(), "replicas", len(f.replicas))
		return nil
	})
	return rpcError(err)
}

// VerifyWeight is Verified when every replica's weights of the route are the mapping of
// desired, NotVerified otherwise (a replica that has not applied the change yet).
func (p *Plugin) VerifyWeight(ro *v1alpha1.Rollout, desired int32, additional []v1alpha1.WeightDestination) (types.RpcVerified, types.RpcError) {
	verified := types.NotVerified
	err := p.call(ro, func(ctx context.Context, cfg Config, f *fleet) error {
		want, err := WeightsFor(cfg, desired, additional)
		if err != nil {
			return err
		}
		now, err := f.view(ctx)
		if err != nil {
			return err
		}
		if allSame(want, now.weights) {
			verified = types.Verified
			return nil
		}
		for i, w := range now.weights {
			if !want.Same(w) {
				p.log().Info("weights not in place yet", "rollout", rolloutName(ro), "route", cfg.Route,
					"gateway", f.replicas[i].address, "want", want.String(), "have", w.String())
			}
		}
		return nil
	})
	if err != nil {
		return types.NotVerified, rpcError(err)
	}
	return verified, types.RpcError{}
}

func allSame(want Weights, now []Weights) bool {
	for _, w := range now {
		if !want.Same(w) {
			return false
		}
	}
	return len(now) > 0
}

// ErrHeaderRoutes is SetHeaderRoute's answer: a queue consumer has no request headers to
// route by.
var ErrHeaderRoutes = errors.New("setHeaderRoute steps are not supported: fanout-gateway routes a route's messages by cohort weights only (there are no request headers); remove the step")

// SetHeaderRoute refuses: the controller calls it only for a Rollout with setHeaderRoute
// steps, which cannot be honoured, and an error says so where a silent success would not.
func (p *Plugin) SetHeaderRoute(ro *v1alpha1.Rollout, headerRoute *v1alpha1.SetHeaderRoute) types.RpcError {
	return rpcError(ErrHeaderRoutes)
}

// SetMirrorRoute sets (or, with no match, removes) a mirror of the route's messages to the
// canary: see mirror.go.
func (p *Plugin) SetMirrorRoute(ro *v1alpha1.Rollout, mirrorRoute *v1alpha1.SetMirrorRoute) types.RpcError {
	cfg, err := ConfigFrom(ro)
	if err != nil {
		return rpcError(err)
	}
	return rpcError(setMirror(cfg, mirrorRoute))
}

// RemoveManagedRoutes removes what the plugin set besides the weights (which the controller
// sets back itself): mirrors, of which there are none yet. A Rollout whose plugin
// configuration is gone or broken has nothing the plugin could find, so that is not an
// error here (it would keep the controller from finishing the Rollout's cleanup).
func (p *Plugin) RemoveManagedRoutes(ro *v1alpha1.Rollout) types.RpcError {
	cfg, err := ConfigFrom(ro)
	if err != nil {
		p.log().Warn("managed routes not looked for", "rollout", rolloutName(ro), "error", err)
		return types.RpcError{}
	}
	return rpcError(removeMirrors(cfg))
}

// Compile-time check that Plugin is what the controller dispenses.
var _ interface {
	InitPlugin() types.RpcError
	types.RpcTrafficRoutingReconciler
} = (*Plugin)(nil)
