package plugin

import (
	"errors"
	"fmt"

	"github.com/argoproj/argo-rollouts/pkg/apis/rollouts/v1alpha1"
)

// Mirror steps (setMirrorRoute) would copy a share of the route's messages to the canary
// cohort while the stable cohort keeps serving them all: a shadow cohort, whose acks and
// nacks are counted but never settle the message. This gateway version has no shadow
// cohorts, so a mirror step is refused with ErrMirrorUnsupported, and there is nothing to
// remove.
//
// Where a mirror implementation goes: setMirror maps the step (its name, its match being
// empty meaning removal, its percentage) to the gateway's shadow cohort call on every
// replica, the way SetWeight maps a weight (a pure mapping with table tests, then the
// fleet), and removeMirrors removes every shadow cohort the plugin set on cfg.Route.

// ErrMirrorUnsupported is SetMirrorRoute's answer from a gateway without shadow cohorts.
var ErrMirrorUnsupported = errors.New("setMirrorRoute steps are not supported by this fanout-gateway version: it has no shadow (mirror) cohorts yet; remove the step, or use setWeight steps")

// setMirror sets the mirror a setMirrorRoute step names, or removes it when the step has no
// match (removing one that was never set succeeds).
func setMirror(cfg Config, step *v1alpha1.SetMirrorRoute) error {
	if step == nil || len(step.Match) == 0 {
		return nil
	}
	return fmt.Errorf("route %q, mirror %q: %w", cfg.Route, step.Name, ErrMirrorUnsupported)
}

// removeMirrors removes every mirror the plugin set on the route: none, yet.
func removeMirrors(Config) error {
	return nil
}
